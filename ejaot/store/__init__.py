"""The artifact store: content-addressed blobs plus one verified msgpack index."""
from .format import FORMAT_VERSION, RECORD_FORMAT, decode_index, encode_index
from .filestore import FileStore

__all__ = ["FORMAT_VERSION", "RECORD_FORMAT", "FileStore", "decode_index", "encode_index"]
