"""Key-value databases of Datum records, as Caffe's ``db::DB`` reads and writes them: LMDB and LevelDB.

Both are read the same way, through a :class:`Reader` (open, count, seek to record ``i``, next, the current key and
value), records in byte-wise key order and wrapping at the end, so the Data layer and the tools have one code path
for either backend. LMDB goes through the ``lmdb`` package (a dependency); LevelDB through ``plyvel``
(``pip install 'pycaffe_norm[leveldb]'``). Writers put the records into a temporary folder next to the target and
rename it at the end, so a failed run leaves nothing half-written behind.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import weakref
from typing import Callable, Iterable, Optional, Tuple

from ..errors import PcnError

log = logging.getLogger("pycaffe_norm")

BACKENDS = ("lmdb", "leveldb")
LEVELDB_HINT = "pip install 'pycaffe_norm[leveldb]'"


def detect_backend(path: str) -> Optional[str]:
    """``"lmdb"`` for an LMDB folder (``data.mdb``) or file, ``"leveldb"`` for a LevelDB folder (a ``CURRENT``
    file), None for anything else."""
    if os.path.isfile(path):
        return "lmdb"  # an LMDB made with MDB_NOSUBDIR is a single file
    if os.path.isfile(os.path.join(path, "data.mdb")):
        return "lmdb"
    if os.path.isfile(os.path.join(path, "CURRENT")):
        return "leveldb"
    return None


def describe(path: str) -> str:
    """What ``path`` looks like, for error messages."""
    found = detect_backend(path)
    if found == "lmdb":
        return "an LMDB (a data.mdb file)" if os.path.isdir(path) else "a file (an LMDB without subdirectory)"
    if found == "leveldb":
        return "a LevelDB (a CURRENT file, no data.mdb)"
    if os.path.isdir(path):
        return "a folder with neither data.mdb (LMDB) nor CURRENT (LevelDB)"
    return "nothing"


class Reader:
    """A cursor over the records of a database in key order. ``seek(i)`` and ``next()`` wrap around at the end."""

    path: str
    _count: Optional[int] = None  # the number of records, once known
    _pos = 0                      # the index of the current record

    # --- what a backend provides ----------------------------------------------------------------------------
    def _first(self) -> bool:
        """Moves to the first record; False when the database is empty."""
        raise NotImplementedError

    def _step(self) -> bool:
        """Moves to the next record; False past the last one."""
        raise NotImplementedError

    def _known_count(self) -> Optional[int]:
        """The number of records when it is cheap to know (LMDB keeps it), else None."""
        return None

    def key(self) -> bytes:
        raise NotImplementedError

    def value(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # --- shared -----------------------------------------------------------------------------------------------
    def count(self) -> int:
        """The number of records (LevelDB: learnt by walking the keys once; the position is kept)."""
        if self._count is None:
            self._count = self._known_count()
            if self._count is None:
                here = self._pos
                n = 0
                ok = self._first()
                while ok:
                    n += 1
                    ok = self._step()
                self._count = n
                self.seek(here)
        return self._count

    def seek(self, index: int) -> None:
        """Puts the cursor on record ``index`` modulo the record count, walking keys from the first."""
        index = int(index)
        if self._count is None:
            self._count = self._known_count()
        if self._count is not None:
            index %= max(self._count, 1)
        if not self._first():
            raise PcnError("%s holds no records" % self.path)
        pos = 0
        while pos < index:
            if not self._step():  # past the end before ``index``: now the count is known
                self._count = pos + 1
                index %= self._count
                self._first()
                pos = 0
                continue
            pos += 1
        self._pos = index

    def next(self) -> bool:
        """Moves to the next record, or back to the first after the last; True when it wrapped around."""
        if self._step():
            self._pos += 1
            return False
        if self._count is None:
            self._count = self._pos + 1
        self._first()
        self._pos = 0
        return True


# One open environment per database and process (py-lmdb refuses a second one; LevelDB locks its folder), shared by
# the readers of the train and test nets; each reader has its own transaction or iterator. Closed when no reader
# holds it any more. The data file's (LevelDB: the folder's) identity is part of the key, so a database rebuilt at a
# path is opened afresh.
_OPEN: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def _identity(path: str, data_file: str) -> tuple:
    try:
        st = os.stat(data_file)
        return (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return (os.path.realpath(path),)  # opening reports what is wrong


class _LevelDBHandle:
    """Holds a ``plyvel.DB`` (which takes no weak references) and closes it when the last reader lets go."""

    def __init__(self, db, spelling: str) -> None:
        self.db = db
        self.spelling = spelling
        weakref.finalize(self, db.close)


_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_VERSION = 1


def check_lmdb_file(data_file: str) -> None:
    """Checks an LMDB data file against its own header before it is mapped: a file shorter than the pages its
    newest meta page counts (a truncated copy, a full disk) would kill the process with SIGBUS when read.

    Layout (LMDB's mdb.c): two meta pages, each a 16-byte page header and MDB_meta: magic and version (uint32), the
    map address and size, two 48-byte MDB_db records (the first one's md_pad holds the page size), the last page
    number and the transaction id; the meta page with the higher transaction id is the current one.
    """
    try:
        size = os.path.getsize(data_file)
        with open(data_file, "rb") as f:
            head = f.read(152)
            if len(head) < 152:
                raise PcnError("%s is not an LMDB data file (%d bytes, shorter than its header)" % (data_file, size))
            magic, version = struct.unpack_from("<II", head, 16)
            if magic != _LMDB_MAGIC:
                raise PcnError("%s is not an LMDB data file (no LMDB magic number in its header)" % data_file)
            if version != _LMDB_VERSION:
                raise PcnError("%s: LMDB data format version %d, pcn's lmdb reads version %d"
                               % (data_file, version, _LMDB_VERSION))
            page_size = struct.unpack_from("<I", head, 40)[0]
            if page_size < 512 or page_size & (page_size - 1):
                raise PcnError("%s: corrupt LMDB header (page size %d)" % (data_file, page_size))
            metas = [head]
            f.seek(page_size)
            second = f.read(152)
            if len(second) == 152 and struct.unpack_from("<I", second, 16)[0] == _LMDB_MAGIC:
                metas.append(second)
    except OSError as e:
        raise PcnError("cannot read LMDB %s: %s" % (data_file, e.strerror or e)) from None
    last_page, _ = max((struct.unpack_from("<QQ", m, 136) for m in metas), key=lambda lt: lt[1])
    needed = (last_page + 1) * page_size
    if needed > size:
        raise PcnError("%s is truncated: its header counts %d pages of %d bytes (%d bytes) but the file has %d bytes"
                       % (data_file, last_page + 1, page_size, needed, size))


class LMDBReader(Reader):
    def __init__(self, path: str) -> None:
        import lmdb

        self.path = path
        data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
        key = ("lmdb",) + _identity(path, data_file)
        self._env = _OPEN.get(key)
        if self._env is None:
            check_lmdb_file(data_file)
            try:
                # Read-only and lock-free, as Caffe opens it (MDB_RDONLY | MDB_NOTLS): a writer may hold the lock.
                self._env = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                      subdir=os.path.isdir(path), max_readers=126)
            except lmdb.Error as e:
                raise PcnError("cannot open LMDB %s: %s" % (path, e)) from None
            _OPEN[key] = self._env
        self._txn = self._env.begin(buffers=False)
        self._cursor = self._txn.cursor()

    def _known_count(self):
        return int(self._env.stat()["entries"])

    def _first(self):
        return self._cursor.first()

    def _step(self):
        return self._cursor.next()

    def key(self):
        return self._cursor.key()

    def value(self):
        return self._cursor.value()

    def close(self):
        self._txn.abort()


class LevelDBReader(Reader):
    def __init__(self, path: str) -> None:
        import plyvel

        self.path = path
        # LevelDB rewrites CURRENT (and the folder) at every open; the folder's inode tells a rebuilt database apart
        real = os.path.realpath(path)
        try:
            key = ("leveldb", real, os.stat(path).st_ino)
        except OSError:
            key = ("leveldb", real)
        self._handle = _OPEN.get(key)
        if self._handle is None:
            # LevelDB refuses a second open of one path string in a process, even after the folder was replaced
            # by a rebuilt database while a reader still holds the old (deleted) one; the new folder is then opened
            # under another spelling of its path (a "/." suffix) that no open handle uses.
            used = {h.spelling for k, h in list(_OPEN.items()) if k[:2] == ("leveldb", real)}
            spelling = real
            while spelling in used:
                spelling += "/."
            try:
                db = plyvel.DB(spelling, create_if_missing=False)
            except plyvel.Error as e:
                msg = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
                raise PcnError("cannot open LevelDB %s: %s" % (path, msg)) from None
            self._handle = _LevelDBHandle(db, spelling)
            _OPEN[key] = self._handle
        self._it = self._handle.db.raw_iterator()  # reads a snapshot, as Caffe's LevelDBCursor does

    def _first(self):
        self._it.seek_to_first()
        return self._it.valid()

    def _step(self):
        self._it.next()
        return self._it.valid()

    def key(self):
        return self._it.key()

    def value(self):
        return self._it.value()

    def close(self):
        self._it.close()


def open_reader(path: str, backend: Optional[str] = None) -> Reader:
    """A :class:`Reader` on the first record of the database at ``path``. ``backend`` (``"lmdb"``/``"leveldb"``)
    must match what the folder holds; None reads whichever it is. Raises PcnError naming the path otherwise."""
    if backend is not None and backend not in BACKENDS:
        raise PcnError("unknown backend %r (use lmdb or leveldb)" % backend)
    if not os.path.exists(path):
        raise PcnError("database not found: %s" % path)
    found = detect_backend(path)
    if found is None:
        raise PcnError("%s is %s, not a database" % (path, describe(path)))
    if backend is not None and found != backend:
        raise PcnError("backend %s was asked for, but %s is %s; give backend %s or leave the backend out"
                       % (backend.upper(), path, describe(path), found.upper()))
    backend = found
    if backend == "leveldb":
        try:
            import plyvel  # noqa: F401
        except ImportError:
            raise PcnError("reading the LevelDB %s needs the 'plyvel' package: %s" % (path, LEVELDB_HINT)) from None
        reader = LevelDBReader(path)
    else:
        try:
            import lmdb  # noqa: F401
        except ImportError:
            raise PcnError("reading the LMDB %s needs the 'lmdb' package: pip install lmdb" % path) from None
        reader = LMDBReader(path)
    if not reader._first():
        raise PcnError("%s %s holds no records" % ("LevelDB" if backend == "leveldb" else "LMDB", path))
    log.info("Opened %s %s", backend, path)
    return reader


def write_db(path: str, records: Iterable[Tuple[bytes, bytes]], backend: str = "lmdb", commit_every: int = 1000,
             on_commit: Optional[Callable[[int], None]] = None) -> int:
    """Writes (key, value) pairs into a new database folder ``path`` (it must not exist, as in Caffe's tools) and
    returns the count; ``on_commit(count)`` is called after each batch of ``commit_every`` records. The records go
    into a temporary folder that is renamed to ``path`` at the end."""
    if backend not in BACKENDS:
        raise PcnError("unknown backend %r (use lmdb or leveldb)" % backend)
    if os.path.exists(path):
        raise PcnError("%s already exists; Caffe's tools refuse to overwrite a database, remove it first" % path)
    if backend == "leveldb":
        try:
            import plyvel  # noqa: F401
        except ImportError:
            raise PcnError("writing a LevelDB needs the 'plyvel' package: %s" % LEVELDB_HINT) from None
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_" + os.path.basename(os.path.abspath(path)), dir=parent)
    writer = _LevelDBWriter(tmp) if backend == "leveldb" else _LMDBWriter(tmp)
    pending, count = [], 0
    try:
        for key, value in records:
            pending.append((key, value))
            count += 1
            if len(pending) == commit_every:
                writer.commit(pending)
                pending = []
                if on_commit is not None:
                    on_commit(count)
        if pending:
            writer.commit(pending)
        writer.close()
        os.rename(tmp, path)
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


class _LMDBWriter:
    def __init__(self, path: str) -> None:
        import lmdb

        self._lmdb = lmdb
        # the map grows as needed, so no size has to be guessed
        self._env = lmdb.open(path, map_size=1 << 26, subdir=True, meminit=False)

    def commit(self, pending) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in pending:
                        txn.put(k, v)
                return
            except self._lmdb.MapFullError:  # the aborted transaction is retried in a map twice as large
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def close(self) -> None:
        self._env.close()


class _LevelDBWriter:
    def __init__(self, path: str) -> None:
        import plyvel

        # Caffe's LevelDB::Open options for a new database
        self._db = plyvel.DB(path, create_if_missing=True, block_size=65536, write_buffer_size=268435456,
                             max_open_files=100)

    def commit(self, pending) -> None:
        with self._db.write_batch() as batch:
            for k, v in pending:
                batch.put(k, v)

    def close(self) -> None:
        self._db.close()
