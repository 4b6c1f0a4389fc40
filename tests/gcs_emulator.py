"""A Google Cloud Storage emulator on the loopback interface for the tests:
`python -m tests.gcs_emulator PORT BUCKET` serves an in-memory `gs://BUCKET` on 127.0.0.1:PORT.

It is `gcp-storage-emulator` (pure Python) with one addition that real GCS has: a media
download carries the object's generation in the `x-goog-generation` header. TensorStore (which
writes Orbax's arrays) reads the generation from it; without it every object looks like
generation 0 and OCDBT's conditional manifest writes fail ("Malformed StorageGeneration").
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])


def main(port: int, bucket: str) -> None:
    objects.download = _download_with_generation  # `objects.get` (?alt=media) calls it
    server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
