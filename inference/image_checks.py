"""Structural checks of an input image file before it is decoded: how many pages it holds.

Grand-challenge fails a whole evaluation when one result has fewer entries than its ground truth,
so a damaged stack must end in an error, never in fewer or altered pages. SimpleITK (libtiff,
MetaIO) does not promise that: a TIFF whose page chain is cut short reads as the pages before the
cut, a chain that loops back never returns, and a compressed MetaImage whose data are damaged
reads as partly wrong pixels without a word. This module reads only the files' structure (TIFF
6.0 and BigTIFF directories, the MetaImage header) and, for compressed MetaImage data, inflates
it once to prove it whole. `expected_pages` says how many pages the decoder (stack_files.py or
SimpleITK) must return; anything else it finds wrong is a `DamagedImage`. Pixel data stored without
compression carry no checksum, so damage inside them cannot be seen by anyone and is not looked for.

Standard library only (struct, zlib), so that the container keeps its dependencies.
"""

import mmap
import struct
import zlib
from pathlib import Path

MAX_ENTRIES = 4096  # directory entries per TIFF page: more means the offset points into pixel data
# TIFF field type -> bytes per value (TIFF 6.0 and BigTIFF); unknown types are skipped, as libtiff does
TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                   16: 8, 17: 8, 18: 8}
TIFF_INTEGER_FORMATS = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH = 254, 256, 257
STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS = 273, 279, 324, 325
REDUCED_RESOLUTION = 1  # NewSubfileType bit: a pyramid level or thumbnail, not a page
# MetaIO's scalar element types as struct (and numpy) type codes: calcsize gives the bytes per value
METAIMAGE_ELEMENT_CODES = {"MET_CHAR": "b", "MET_UCHAR": "B", "MET_SHORT": "h", "MET_USHORT": "H", "MET_INT": "i",
                           "MET_UINT": "I", "MET_LONG_LONG": "q", "MET_ULONG_LONG": "Q", "MET_FLOAT": "f",
                           "MET_DOUBLE": "d"}
METAIMAGE_HEADER_LIMIT = 1 << 16  # bytes of text before the pixel data, at most
# Pixels a file may decode to: a 20,000 x 20,000 RGB region is 1.2 GB; past this, a file that
# claims a vast image (a few KB of compressed zeros can) would exhaust the container's memory.
MAX_DECODED_BYTES = 2 << 30
BITS_PER_SAMPLE, SAMPLES_PER_PIXEL = 258, 277
INFLATE_CHUNK = 1 << 24  # bytes of inflated MetaImage data held at once while checking


class DamagedImage(ValueError):
    """The file's structure is broken: SimpleITK would read fewer, other or no pages from it."""


def check_decoded_size(decoded_bytes: int, shape: str) -> None:
    """Refuse an image whose pixels would take more than MAX_DECODED_BYTES once decoded."""
    if decoded_bytes > MAX_DECODED_BYTES:
        raise DamagedImage(f"it would decode to {decoded_bytes / 1e9:.1f} GB ({shape}), more than the "
                           f"{MAX_DECODED_BYTES / 2**30:.0f} GiB this container reads: not a stack of crops or a "
                           "region of interest, or its header is damaged")


def expected_pages(path: Path) -> int | None:
    """Pages a TIFF or MetaImage file holds, its structure checked; None for other formats.

    The file is mapped, not read: only the structure it walks is paged in (SimpleITK reads the
    pixels afterwards), so a large region of interest is not held twice in memory.
    """
    data = mapped(Path(path))
    if is_tiff(data):
        return TiffStructure(data).pages()
    if is_metaimage(data):
        return metaimage_pages(data)
    return None


def is_tiff(data: bytes) -> bool:
    """Whether the bytes start as a classic or Big TIFF, either byte order."""
    return data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def is_metaimage(data: bytes) -> bool:
    """Whether the bytes start as a MetaImage header (its first field, ObjectType or NDims)."""
    return data[:64].lstrip()[:10].lower().startswith((b"objecttype", b"ndims"))


def mapped(path: Path) -> bytes | mmap.mmap:
    """The file's bytes as a read-only memory map (b"" for an empty file, which cannot be mapped)."""
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own handle; closed when freed


class TiffStructure:
    """The directory chain of a classic or Big TIFF, walked without decoding pixels."""

    def __init__(self, data: bytes):
        self.data = data
        self.order = "<" if data[:2] == b"II" else ">"
        self.big = struct.unpack(self.order + "H", data[2:4])[0] == 43
        # (count field, one entry, next-directory offset) in bytes; classic TIFF or BigTIFF
        self.count_size, self.entry_size, self.offset_size = (8, 20, 8) if self.big else (2, 12, 4)

    def _unpack(self, fmt: str, offset: int) -> int:
        size = struct.calcsize(self.order + fmt)
        if offset < 0 or offset + size > len(self.data):
            raise DamagedImage(f"TIFF structure reaches past the end of the file (byte {offset} of {len(self.data)}): "
                               "the file is truncated or damaged")
        return struct.unpack_from(self.order + fmt, self.data, offset)[0]

    def _offset(self, position: int) -> int:
        return self._unpack("Q" if self.big else "I", position)

    def pages(self) -> int:
        """Full-resolution pages in the chain; raises DamagedImage where the structure is broken."""
        directories: list[tuple[int, dict]] = []  # (byte offset, tag -> entry) per page, in chain order
        page_of: dict[int, int] = {}  # byte offset -> page, to see a chain that loops
        offset = self._offset(8 if self.big else 4)
        while offset:
            if offset in page_of:
                raise DamagedImage(f"TIFF page chain loops back to page {page_of[offset]} after page "
                                   f"{len(directories) - 1}: the file is damaged")
            if offset >= len(self.data):
                raise DamagedImage(f"TIFF page {len(directories)} would start at byte {offset}, past the end of the "
                                   f"{len(self.data)}-byte file: the file is truncated or its page chain is broken")
            entries, next_offset = self._directory(offset, page=len(directories))
            page_of[offset] = len(directories)
            directories.append((offset, entries))
            offset = next_offset
        if not directories:
            raise DamagedImage("TIFF file without a single page")
        self._check_no_orphan_pages(directories)
        pages = [entries for _, entries in directories
                 if not self._value(entries.get(NEW_SUBFILE_TYPE), default=0) & REDUCED_RESOLUTION]
        check_decoded_size(sum(self._page_bytes(entries) for entries in pages), f"{len(pages)} TIFF pages")
        return len(pages)

    def _page_bytes(self, entries: dict) -> int:
        """Bytes one page decodes to: width x height x samples per pixel x bytes per sample."""
        width, height = self._value(entries[IMAGE_WIDTH], default=0), self._value(entries[IMAGE_LENGTH], default=0)
        samples = self._value(entries.get(SAMPLES_PER_PIXEL), default=1)
        bits = self._value(entries.get(BITS_PER_SAMPLE), default=1)
        return width * height * samples * max(1, bits // 8)

    def _directory(self, offset: int, *, page: int) -> tuple[dict[int, tuple[int, int, int, int]], int]:
        """One page's tags -> (type, count, value position, entry position), its data checked; and the next offset."""
        count = self._unpack("Q" if self.big else "H", offset)
        if not 0 < count <= MAX_ENTRIES:
            raise DamagedImage(f"TIFF page {page} at byte {offset} claims {count} tags: not a page directory, "
                               "so the page chain is broken")
        entries = {}
        for index in range(count):
            position = offset + self.count_size + index * self.entry_size
            tag, field_type = self._unpack("H", position), self._unpack("H", position + 2)
            value_count = self._unpack("Q" if self.big else "I", position + 4)
            value_position = position + 4 + self.offset_size
            size = TIFF_TYPE_SIZES.get(field_type)
            if size is None:
                continue
            if size * value_count > self.offset_size:  # values elsewhere in the file, not inline
                value_position = self._offset(value_position)
                if value_position + size * value_count > len(self.data):
                    raise DamagedImage(f"TIFF page {page}: the values of tag {tag} lie past the end of the file "
                                       "(truncated?)")
            entries[tag] = (field_type, value_count, value_position, position)
        self._check_pixel_data(entries, page=page)
        return entries, self._offset(offset + self.count_size + count * self.entry_size)

    def _values(self, entry: tuple[int, int, int, int]) -> list[int]:
        field_type, count, position, _ = entry
        fmt = TIFF_INTEGER_FORMATS.get(field_type)
        if fmt is None:
            raise DamagedImage(f"TIFF tag at byte {entry[3]} has type {field_type} where an integer is required")
        return list(struct.unpack_from(f"{self.order}{count}{fmt}", self.data, position))

    def _value(self, entry, *, default: int) -> int:
        return self._values(entry)[0] if entry is not None else default

    def _check_pixel_data(self, entries: dict, *, page: int) -> None:
        """Every strip or tile of the page lies inside the file."""
        for required in (IMAGE_WIDTH, IMAGE_LENGTH):
            if required not in entries:
                raise DamagedImage(f"TIFF page {page} has no image {'width' if required == IMAGE_WIDTH else 'length'}")
        offsets_tag, counts_tag = ((TILE_OFFSETS, TILE_BYTE_COUNTS) if TILE_OFFSETS in entries
                                   else (STRIP_OFFSETS, STRIP_BYTE_COUNTS))
        if offsets_tag not in entries or counts_tag not in entries:
            raise DamagedImage(f"TIFF page {page} does not say where its pixel data lie")
        offsets, byte_counts = self._values(entries[offsets_tag]), self._values(entries[counts_tag])
        if len(offsets) != len(byte_counts):
            raise DamagedImage(f"TIFF page {page}: {len(offsets)} data offsets but {len(byte_counts)} byte counts")
        ends = [start + length for start, length in zip(offsets, byte_counts) if length]
        if ends and max(ends) > len(self.data):
            raise DamagedImage(f"TIFF page {page}: its pixel data end at byte {max(ends)}, past the end of the "
                               f"{len(self.data)}-byte file: the file is truncated")

    def _check_no_orphan_pages(self, directories: list[tuple[int, dict]]) -> None:
        """No page directory lies outside the chain (a chain cut short by a zero link loses the pages after it).

        A candidate is the first page's image-width entry found byte for byte elsewhere; it is a
        directory when, at the distance it has in the first page, a tag count precedes it whose
        entries hold strictly ascending tags, as TIFF requires.
        """
        first_start, first_entries = directories[0]
        width_entry = first_entries[IMAGE_WIDTH][3]
        pattern = self.data[width_entry:width_entry + self.entry_size]
        index_in_directory = (width_entry - first_start - self.count_size) // self.entry_size
        linked = {entries[IMAGE_WIDTH][3] for _, entries in directories}
        position = self.data.find(pattern)
        while position >= 0:
            start = position - self.count_size - index_in_directory * self.entry_size
            if position not in linked and self._is_directory(start, width_index=index_in_directory):
                raise DamagedImage(f"a TIFF page directory at byte {start} is not linked into the page chain of "
                                   f"{len(directories)} pages: the chain is broken and pages would be lost")
            position = self.data.find(pattern, position + 1)

    def _is_directory(self, start: int, *, width_index: int) -> bool:
        """Whether a page directory plausibly starts at `start`: a tag count, then ascending tags."""
        try:
            count = self._unpack("Q" if self.big else "H", start)
            if not width_index < count <= MAX_ENTRIES:
                return False
            tags = [self._unpack("H", start + self.count_size + index * self.entry_size) for index in range(count)]
        except DamagedImage:
            return False
        return tags[width_index] == IMAGE_WIDTH and all(a < b for a, b in zip(tags, tags[1:]))


def metaimage_header(data: bytes) -> tuple[dict[str, str], int]:
    """The `Key = Value` fields of a MetaImage header, and the byte where its pixel data begin."""
    fields, position = {}, 0
    while "ElementDataFile" not in fields:
        end = data.find(b"\n", position, METAIMAGE_HEADER_LIMIT)
        if end < 0:
            raise DamagedImage("MetaImage header without an ElementDataFile line: the file is truncated or not a "
                               "MetaImage")
        key, _, value = data[position:end].decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        position = end + 1
    return fields, position


def metaimage_pages(data: bytes) -> int:
    """Pages of a .mha (its third dimension, or 1), with its pixel data proven complete."""
    fields, start = metaimage_header(data)
    if fields["ElementDataFile"] != "LOCAL":
        raise DamagedImage(f"MetaImage whose pixels lie in another file ({fields['ElementDataFile']!r}); a .mha must "
                           "hold its own (ElementDataFile = LOCAL)")
    try:
        dimensions = [int(value) for value in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError as error:
        raise DamagedImage(f"MetaImage header with unreadable sizes: {error}") from error
    if not dimensions or len(dimensions) != int(fields.get("NDims", len(dimensions))):
        raise DamagedImage(f"MetaImage header: DimSize {fields.get('DimSize')!r} does not match NDims "
                           f"{fields.get('NDims')!r}")
    code = METAIMAGE_ELEMENT_CODES.get(fields.get("ElementType", ""))
    if code is not None:
        expected = channels * struct.calcsize("<" + code)
        for size in dimensions:
            expected *= size
        check_decoded_size(expected, f"MetaImage of {' x '.join(map(str, dimensions))} x {channels} channels")
        pixel_data = memoryview(data)[start:]
        compressed = fields.get("CompressedData", "False").lower() == "true"
        found = inflated_size(pixel_data, expected) if compressed else len(pixel_data)
        if found != expected:
            held = f"more than {expected}" if compressed and found > expected else str(found)
            raise DamagedImage(f"MetaImage pixel data hold {held} bytes{' once inflated' if compressed else ''}, "
                               f"its header promises {expected}: the file is truncated or damaged")
    return dimensions[2] if len(dimensions) >= 3 else 1


def inflated_chunks(stream: memoryview):
    """The inflated bytes of zlib stream(s), one bounded chunk at a time (MetaIO writes large data in several
    streams); raises DamagedImage when a stream is damaged or cut short."""
    remaining = stream
    while len(remaining):
        inflater = zlib.decompressobj()
        try:
            chunk = inflater.decompress(remaining, INFLATE_CHUNK)
            while chunk:
                yield chunk
                chunk = inflater.decompress(inflater.unconsumed_tail, INFLATE_CHUNK)
        except zlib.error as error:
            raise DamagedImage(f"MetaImage pixel data cannot be decoded ({error}): the file is damaged") from error
        if not inflater.eof:
            raise DamagedImage("MetaImage pixel data end in the middle of a compressed stream: the file is truncated")
        remaining = inflater.unused_data


def inflated_size(stream: memoryview, expected: int) -> int:
    """Bytes that zlib stream(s) inflate to, counted no further than just past `expected`."""
    total = 0
    for chunk in inflated_chunks(stream):
        total += len(chunk)
        if total > expected:
            break
    return total
