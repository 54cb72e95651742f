"""The artifact store: content-addressed blobs plus one verified msgpack index."""
from .format import FORMAT_VERSION, decode_index, encode_index
from .filestore import FileStore

__all__ = ["FORMAT_VERSION", "FileStore", "decode_index", "encode_index"]
