"""tagloop's REST API (/api/v1/): DRF views over the services, scoped by labeling.permissions.

Modules by resource: ``taxonomies`` (clients, taxonomies, tags), ``assets`` (list, upload,
history, suggestions), ``labels`` (single, bulk, the leased queue), ``models`` (predict, model
versions, training runs), ``exports``. ``base`` holds the scoping and the keyset cursor.
"""
