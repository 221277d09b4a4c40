"""An external pipeline using tagloop's REST API with a token: send a batch of images to the
live model and print the top-3 tags of each (nothing is stored).

    .venv/bin/python manage.py drf_create_token operator          # once: prints the token
    TAGLOOP_TOKEN=... .venv/bin/python scripts/pipeline_example.py \\
        --url http://127.0.0.1:8000 --client demo --taxonomy 1 ../shared/datasets/shoes/test/nike/*.jpg

``--upload`` also imports the files into the client's library (needs an admin's token) and
follows the import job until it is done. Only the standard library is used.
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

BATCH = 64  # the API's limit of images per predict call


def call(url: str, token: str, method: str = "GET", files: list[tuple[str, Path]] | None = None) -> dict:
    headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
    body = None
    if files is not None:
        boundary = uuid.uuid4().hex
        parts = []
        for field, path in files:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
                         f"Content-Type: {kind}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        sys.exit(f"{method} {url}: {exc.code} {exc.read().decode(errors='replace')[:500]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--client", required=True, help="client slug")
    p.add_argument("--taxonomy", required=True, type=int, help="taxonomy id")
    p.add_argument("--token", default=os.environ.get("TAGLOOP_TOKEN"), help="or TAGLOOP_TOKEN")
    p.add_argument("--upload", action="store_true", help="also import the images (admin token)")
    args = p.parse_args(argv)
    if not args.token:
        p.error("a token is needed: --token or TAGLOOP_TOKEN (manage.py drf_create_token USER)")
    api = f"{args.url.rstrip('/')}/api/v1/clients/{args.client}/"
    taxonomy = f"{api}taxonomies/{args.taxonomy}/"
    for start in range(0, len(args.images), BATCH):
        batch = args.images[start:start + BATCH]
        result = call(taxonomy + "predict/", args.token, "POST", [("images", path) for path in batch])
        for prediction in result["predictions"]:
            tags = ", ".join(f"{t['name']} {t['prob']:.0%}" for t in prediction["tags"])
            print(f"{prediction['name']}\t{tags}\t(model v{result['version']})")
    if args.upload:
        job = call(api + "assets/", args.token, "POST", [("files", path) for path in args.images])
        while not job["done"]:
            time.sleep(1)
            job = call(f"{api}imports/{job['id']}/", args.token)
            print(f"import #{job['id']}: {job['processed']}/{job['total']}", file=sys.stderr)
        print(f"imported {job['created']} new, {job['duplicates']} already there, {job['failed']} failed",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
