"""Private media: images and thumbnails reach members of the asset's client only."""
from __future__ import annotations

import pytest
from django.urls import reverse


@pytest.fixture
def acme_asset(shoe_library):
    assets, _ = shoe_library
    return next(iter(assets.values()))


@pytest.mark.parametrize("name", ["asset_image", "asset_thumb"])
def test_members_of_every_role_get_the_file(client, world, acme_asset, name):
    for user in (world.alice, world.olga, world.vic):
        client.force_login(user)
        r = client.get(reverse(name, args=[acme_asset.pk]))
        assert r.status_code == 200
        body = b"".join(r.streaming_content)
        assert body[:3] == b"\xff\xd8\xff"  # a JPEG, the real bytes
        assert "private" in r["Cache-Control"]


@pytest.mark.parametrize("name", ["asset_image", "asset_thumb"])
def test_another_clients_operator_gets_404(client, world, acme_asset, name):
    client.force_login(world.otto)
    assert client.get(reverse(name, args=[acme_asset.pk])).status_code == 404


@pytest.mark.parametrize("name", ["asset_image", "asset_thumb"])
def test_a_user_without_any_client_gets_404_and_anonymous_is_sent_to_login(client, world, acme_asset, name):
    url = reverse(name, args=[acme_asset.pk])
    r = client.get(url)
    assert r.status_code == 302 and "/login/" in r["Location"]
    client.force_login(world.nobody)
    assert client.get(url).status_code == 404


def test_the_media_folder_is_not_served_by_any_url(client, world, acme_asset):
    client.force_login(world.alice)
    for url in ("/media/" + acme_asset.file.name, "/media-not-served/" + acme_asset.file.name,
                "/static/../var/media/" + acme_asset.file.name):
        assert client.get(url).status_code == 404


def test_a_missing_file_is_a_404_not_a_crash(client, world, acme_asset):
    acme_asset.file.storage.delete(acme_asset.file.name)
    client.force_login(world.olga)
    assert client.get(reverse("asset_image", args=[acme_asset.pk])).status_code == 404


def test_the_sendfile_header_hands_the_checked_path_to_the_web_server(client, world, acme_asset, settings):
    settings.TAGLOOP_SENDFILE_HEADER = "X-Accel-Redirect"
    client.force_login(world.olga)
    r = client.get(reverse("asset_image", args=[acme_asset.pk]))
    assert r["X-Accel-Redirect"] == "/protected/" + acme_asset.file.name
    client.force_login(world.otto)
    assert client.get(reverse("asset_image", args=[acme_asset.pk])).status_code == 404


def test_an_api_client_follows_an_assets_image_links_with_its_token(world, acme_asset):
    from tests._helpers import api

    c = api(world.vic, token=True)
    row = c.get(f"/api/v1/clients/acme/assets/{acme_asset.pk}/").json()
    for field in ("image", "thumbnail"):
        assert row[field].startswith("http://testserver/media/assets/")  # absolute: usable as is
        r = c.get(row[field])
        assert r.status_code == 200 and b"".join(r.streaming_content)[:3] == b"\xff\xd8\xff"
    # another client's token and a wrong token get nothing of the file
    assert api(world.otto, token=True).get(row["image"]).status_code == 404
    wrong = api()
    wrong.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    r = wrong.get(row["image"])
    assert r.status_code == 401 and "token" in r.json()["detail"].lower()


def test_a_rotated_webp_is_shown_turned_like_its_thumbnail_and_a_plain_one_as_stored(client, world, tmp_path):
    import io

    from PIL import Image

    from labeling.models import Asset
    from labeling.services import importing

    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, to be shown turned a quarter: portrait
    Image.new("RGB", (90, 60), (20, 120, 200)).save(src / "turned.webp", "WEBP", exif=exif.tobytes())
    Image.new("RGB", (90, 60), (200, 120, 20)).save(src / "plain.webp", "WEBP")
    importing.import_paths(world.acme, src)
    client.force_login(world.vic)
    turned, plain = (Asset.objects.get(original_name=n) for n in ("turned.webp", "plain.webp"))
    assert (turned.width, turned.height) == (60, 90)
    shown = b"".join(client.get(reverse("asset_image", args=[turned.pk])).streaming_content)
    with Image.open(io.BytesIO(shown)) as img:  # Chromium ignores a WebP's EXIF orientation
        assert img.format == "JPEG" and img.size == (60, 90)
    shown = b"".join(client.get(reverse("asset_image", args=[plain.pk])).streaming_content)
    assert shown == (src / "plain.webp").read_bytes()
