"""Structure-aware mutations of DICOM Part 10 files, each named, all seeded.

A mutation takes a valid file (its bytes and `spinexr.fuzz.elements.Layout`) and a
`random.Random`, and returns the broken file, or ``None`` when it does not apply to that file
(no encapsulated Pixel Data to break, say). `mutate` picks one by weight; the same
``Random`` state gives the same output. Most mutations leave the file meta group readable, so
that a sender can still choose a presentation context and the data set reaches the node.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from spinexr.fuzz.elements import (
    ITEM,
    ITEM_DELIMITER,
    LONG_VRS,
    PIXEL_DATA,
    SEQUENCE_DELIMITER,
    UNDEFINED,
    Element,
    Layout,
    scan,
)

Mutation = Callable[[bytes, Layout, random.Random], bytes | None]

VRS = (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
)  # fmt: skip
ROWS, COLUMNS, FRAMES = 0x00280010, 0x00280011, 0x00280008
BITS_ALLOCATED, BITS_STORED, HIGH_BIT = 0x00280100, 0x00280101, 0x00280102
PIXEL_REPRESENTATION, SAMPLES, PHOTOMETRIC = 0x00280103, 0x00280002, 0x00280004
SOP_INSTANCE, STUDY_UID, SERIES_UID, SOP_CLASS = 0x00080018, 0x0020000D, 0x0020000E, 0x00080016
TRANSFER_SYNTAX, META_GROUP_LENGTH = 0x00020010, 0x00020000
NUMERIC_STRINGS = (
    0x00281050, 0x00281051, 0x00281052, 0x00281053, 0x00280030, 0x00181164, 0x00200013,
)  # fmt: skip
SYNTAXES = (
    b"1.2.840.10008.1.2",
    b"1.2.840.10008.1.2.1",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.2",
    b"1.2.840.10008.1.2.4.50",
    b"1.2.840.10008.1.2.4.57",
    b"1.2.840.10008.1.2.4.70",
    b"1.2.840.10008.1.2.4.80",
    b"1.2.840.10008.1.2.4.90",
    b"1.2.840.10008.1.2.4.201",
    b"1.2.840.10008.1.2.5",
    b"1.2.3.4.5",
    b"",
    b"\xff\xfe garbage",
)
NUMBERS = (b"abc", b"1e309", b"-1e309", b"nan", b"inf", b"-0", b"\\\\\\", b"0", b"-65536",
           b"99999999999999999999", b"1\\2\\3\\4\\5", b" ", b"0.0000000000000001")  # fmt: skip
PHOTOMETRICS = (b"RGB ", b"YBR_FULL", b"PALETTE COLOR ", b"MONOCHROME1 ", b"MONOCHROME3 ", b"")


@dataclass(frozen=True)
class Mutant:
    """One mutated file.

    Attributes
    ----------
    mutation : str
        The mutation's name (``+``-joined when several were stacked).
    data : bytes
        The file.
    """

    mutation: str
    data: bytes


# --------------------------------------------------------------------------- byte helpers


def _put_length(data: bytes, el: Element, value: int) -> bytes:
    fmt = "<H" if el.length_size == 2 else "<L"
    value &= 0xFFFF if el.length_size == 2 else 0xFFFFFFFF
    return (
        data[: el.length_offset]
        + struct.pack(fmt, value)
        + data[el.length_offset + el.length_size :]
    )


def _header(el: Element, length: int) -> bytes:
    """Return the element's header again, with another value length."""
    tag = struct.pack("<HH", el.tag >> 16, el.tag & 0xFFFF)
    if not el.explicit:
        return tag + struct.pack("<L", length)
    vr = el.vr.encode("latin-1")
    if el.length_size == 4:
        return tag + vr + b"\x00\x00" + struct.pack("<L", length)
    return tag + vr + struct.pack("<H", min(length, 0xFFFF))


def _replace_value(data: bytes, el: Element, value: bytes) -> bytes:
    """Rewrite a defined-length element with ``value`` (padded to even length)."""
    if len(value) % 2:
        value += b"\x00" if el.vr in ("UI", "OB") else b" "
    return data[: el.offset] + _header(el, len(value)) + value + data[el.end :]


def _fix_meta_length(data: bytes) -> bytes:
    """Recompute (0002,0000) File Meta Information Group Length after a meta edit."""
    layout = scan(data)
    group = layout.find(META_GROUP_LENGTH, meta=True)
    if group is None:
        return data
    length = layout.meta_end - group.end
    return data[: group.value_offset] + struct.pack("<L", length) + data[group.end :]


def _explicit_element(tag: int, vr: str, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _element(layout: Layout, tag: int, vr: str, value: bytes) -> bytes:
    if layout.implicit:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
    return _explicit_element(tag, vr, value)


def _us(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def _dataset_elements(layout: Layout) -> list[Element]:
    return [e for e in layout.elements if not e.in_meta]


def _insert_before_pixels(data: bytes, layout: Layout, blob: bytes) -> bytes:
    pixels = layout.find(PIXEL_DATA)
    at = pixels.offset if pixels is not None else len(data)
    return data[:at] + blob + data[at:]


def _fragments(layout: Layout) -> list[Element]:
    pixels = layout.find(PIXEL_DATA)
    if pixels is None or pixels.length != UNDEFINED:
        return []
    return [e for e in layout.elements if e.offset > pixels.offset and e.depth == 1]


# --------------------------------------------------------------------------- mutations


def bit_flip(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Flip 1–16 random bits of the data set."""
    out = bytearray(data)
    start = layout.meta_end
    if start >= len(out):
        return None
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(start, len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def header_bit_flip(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Flip bits only in element headers (tags, VRs, lengths) of the data set."""
    elements = _dataset_elements(layout)
    if not elements:
        return None
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        el = rng.choice(elements)
        i = rng.randrange(el.offset, el.value_offset)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate_at_boundary(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Cut the file at an element boundary (its tag, its length field or its value)."""
    elements = _dataset_elements(layout)
    if not elements:
        return None
    el = rng.choice(elements)
    cut = rng.choice(
        (el.offset, el.length_offset, el.value_offset, el.end - 1 if el.length else el.end)
    )
    return data[: max(layout.meta_end, min(cut, len(data) - 1))]


def truncate_anywhere(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Cut the file at a random byte of the data set."""
    if layout.meta_end >= len(data):
        return None
    return data[: rng.randrange(layout.meta_end, len(data))]


def wrong_length(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Declare a slightly wrong value length (±1, ±2, ±4, 0, odd)."""
    elements = [e for e in _dataset_elements(layout) if e.length != UNDEFINED]
    if not elements:
        return None
    el = rng.choice(elements)
    return _put_length(
        data, el, max(0, el.length + rng.choice((-4, -2, -1, 1, 2, 4, 3, -el.length)))
    )


def huge_length(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Declare a value length far past the end of the file."""
    elements = _dataset_elements(layout)
    if not elements:
        return None
    el = rng.choice(elements)
    if el.length_size == 2:
        return _put_length(data, el, rng.choice((0xFFFF, 0xFFFE, 0x8000)))
    return _put_length(
        data, el, rng.choice((0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, len(data) * 4 + 2))
    )


def undefined_length(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Give a non-sequence element (or an item, or a fragment) undefined length."""
    elements = [
        e for e in _dataset_elements(layout) if e.length_size == 4 and e.length != UNDEFINED
    ]
    if not elements:
        return None
    return _put_length(data, rng.choice(elements), UNDEFINED)


def vr_swap(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Write another VR (a real one, or two random letters) into an explicit element."""
    elements = [e for e in _dataset_elements(layout) if e.explicit]
    if not elements:
        return None
    el = rng.choice(elements)
    vr = rng.choice(VRS).encode() if rng.random() < 0.85 else bytes(rng.choices(b"ABCXYZ\x00", k=2))
    return data[: el.offset + 4] + vr + data[el.offset + 6 :]


def _undefined_sequence(layout: Layout, rng: random.Random, delimit: bool) -> bytes:
    """Build a private sequence of undefined length, its items too, with or without delimiters."""
    item_body = _element(layout, 0x00091010, "LO", b"FUZZ")
    blob = b""
    for _ in range(rng.randint(1, 3)):
        blob += struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED) + item_body
        if delimit:
            blob += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    if delimit:
        blob += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    creator = _element(layout, 0x00090010, "LO", b"SPINEXR FUZZ")
    if layout.implicit:
        head = struct.pack("<HHL", 0x0009, 0x1011, UNDEFINED)
    else:
        head = struct.pack("<HH", 0x0009, 0x1011) + b"SQ\x00\x00" + struct.pack("<L", UNDEFINED)
    return creator + head + blob


def undelimited_sequence(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Insert an undefined-length sequence whose items and end have no delimiters."""
    return _insert_before_pixels(data, layout, _undefined_sequence(layout, rng, delimit=False))


def deep_nesting(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Insert a sequence nested 10–5,000 levels deep (undefined lengths, delimited)."""
    depth = rng.choice((10, 17, 40, 200, 1000, 5000))
    if layout.implicit:
        seq = struct.pack("<HHL", 0x0040, 0xA730, UNDEFINED)
    else:
        seq = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" + struct.pack("<L", UNDEFINED)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
    close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    closed = rng.random() < 0.7
    blob = (seq + item) * depth + (close * depth if closed else b"")
    return _insert_before_pixels(data, layout, blob)


def broken_offset_table(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Break the Basic Offset Table: odd, huge or past-the-end lengths, garbage offsets."""
    fragments = _fragments(layout)
    if not fragments:
        return None
    bot = fragments[0]
    choice = rng.randrange(4)
    if choice == 0:
        return _put_length(data, bot, rng.choice((1, 3, 6, 0xFFFFFFF0, UNDEFINED)))
    if choice == 1:  # a table with offsets that point anywhere
        offsets = b"".join(struct.pack("<L", rng.getrandbits(32)) for _ in range(rng.randint(1, 4)))
        return (
            data[: bot.offset]
            + struct.pack("<HHL", 0xFFFE, 0xE000, len(offsets))
            + offsets
            + data[bot.end :]
        )
    if choice == 2:  # no Basic Offset Table item at all
        return data[: bot.offset] + data[bot.end :]
    return (
        data[: bot.offset]
        + struct.pack("<HHL", 0xFFFE, 0xE000, 8)
        + struct.pack("<LL", 0, 2**31)
        + data[bot.end :]
    )


def broken_item_tag(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Replace an item or delimiter tag of the Pixel Data (or of a sequence) with another tag."""
    items = [e for e in _dataset_elements(layout) if e.is_item_or_delimiter]
    if not items:
        return None
    el = rng.choice(items)
    if rng.random() < 0.3 and el.tag == SEQUENCE_DELIMITER:
        return data[: el.offset] + data[el.end :]  # drop the sequence delimiter
    tag = rng.choice((0xFFFEE00D, 0xFFFEE0DD, 0xFFFEE000, 0x7FE00010, 0x00080018, 0xFFFFFFFF, 0))
    return data[: el.offset] + struct.pack("<HH", tag >> 16, tag & 0xFFFF) + data[el.offset + 4 :]


def fragment_length(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Declare a wrong fragment length (shorter, longer, odd, zero, past the end)."""
    fragments = _fragments(layout)[1:]
    fragments = [f for f in fragments if f.tag == ITEM]
    if not fragments:
        return None
    el = rng.choice(fragments)
    return _put_length(
        data,
        el,
        rng.choice((0, 1, el.length - 1, el.length + 1, el.length // 2, el.length * 2, len(data))),
    )


def compressed_cut(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Cut an encapsulated frame's stream short, keeping the encapsulation consistent."""
    fragments = [f for f in _fragments(layout)[1:] if f.tag == ITEM and f.length > 2]
    if not fragments:
        return None
    el = fragments[-1]
    keep = rng.choice((0, 1, 2, el.length // 10, el.length // 2, el.length - 2)) & ~1
    rest = data[el.end :]
    return (
        data[: el.offset]
        + struct.pack("<HHL", 0xFFFE, 0xE000, keep)
        + data[el.value_offset : el.value_offset + keep]
        + rest
    )


def compressed_garbage(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Overwrite bytes inside an encapsulated stream (markers and headers included)."""
    fragments = [f for f in _fragments(layout)[1:] if f.tag == ITEM and f.length > 0]
    if not fragments:
        return None
    el = rng.choice(fragments)
    out = bytearray(data)
    head = min(el.length, 64)
    for _ in range(rng.randint(1, 12)):
        span = head if rng.random() < 0.6 else el.length
        i = min(el.value_offset + rng.randrange(span), len(out) - 1)
        out[i] = rng.getrandbits(8)
    return bytes(out)


def wrong_transfer_syntax(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Declare another transfer syntax in the file meta (group length fixed, or not)."""
    el = layout.find(TRANSFER_SYNTAX, meta=True)
    if el is None:
        return None
    out = _replace_value(data, el, rng.choice(SYNTAXES))
    return _fix_meta_length(out) if rng.random() < 0.8 else out


def meta_bit_flip(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Flip a bit in the preamble marker or file meta group."""
    if layout.meta_end <= 128:
        return None
    out = bytearray(data)
    i = rng.randrange(128, layout.meta_end)
    out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def pixel_data_size(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Native Pixel Data shorter or longer than Rows × Columns × frames (length consistent)."""
    el = layout.find(PIXEL_DATA)
    if el is None or el.length == UNDEFINED or el.depth:
        return None
    value = data[el.value_offset : el.end]
    n = len(value)
    new = rng.choice((0, 2, n // 2, n - 2, n + 2, n * 2, n + 4096))
    value = value[:new] if new <= n else value + bytes(new - n)
    return _replace_value(data, el, value)


def odd_bits(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Odd BitsAllocated / BitsStored / HighBit / PixelRepresentation / SamplesPerPixel."""
    tag = rng.choice((BITS_ALLOCATED, BITS_STORED, HIGH_BIT, PIXEL_REPRESENTATION, SAMPLES))
    el = layout.find(tag)
    if el is None or el.length != 2:
        return None
    value = rng.choice((0, 1, 2, 3, 7, 9, 12, 13, 15, 16, 17, 24, 31, 32, 33, 64, 255, 0xFFFF))
    return data[: el.value_offset] + _us(value) + data[el.end :]


def huge_dimensions(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Rows/Columns/NumberOfFrames huge or zero (decompression-bomb style headers)."""
    out = data
    for tag in (ROWS, COLUMNS):
        el = scan(out).find(tag)
        if el is not None and el.length == 2 and rng.random() < 0.7:
            value = rng.choice((0, 1, 63, 4096, 16384, 30000, 65535))
            out = out[: el.value_offset] + _us(value) + out[el.end :]
    if rng.random() < 0.4:
        layout2 = scan(out)
        frames = rng.choice((b"0 ", b"2 ", b"1000", b"99999999", b"-1", b"x "))
        existing = layout2.find(FRAMES)
        if existing is not None:
            out = _replace_value(out, existing, frames)
        else:
            blob = _element(layout2, FRAMES, "IS", frames)
            at = next((e.offset for e in layout2.top() if e.tag > FRAMES), len(out))
            out = out[:at] + blob + out[at:]
    return None if out == data else out


def bad_numbers(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Unreadable decimal/integer strings in window, rescale, spacing and instance number."""
    elements = [e for e in layout.top() if e.tag in NUMERIC_STRINGS and e.length != UNDEFINED]
    if not elements:
        return None
    return _replace_value(data, rng.choice(elements), rng.choice(NUMBERS))


def photometric(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Another photometric interpretation (colour, unknown, empty)."""
    el = layout.find(PHOTOMETRIC)
    if el is None or el.length == UNDEFINED:
        return None
    return _replace_value(data, el, rng.choice(PHOTOMETRICS))


def bad_uid(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Write an invalid, empty, over-long or path-like UID into the data set."""
    tag = rng.choice((SOP_INSTANCE, STUDY_UID, SERIES_UID, SOP_CLASS))
    el = layout.find(tag)
    if el is None or el.length == UNDEFINED:
        return None
    value = rng.choice(
        (b"", b"../../../../tmp/x", b"1." * 40, b"1.2.abc", b"01.2.3", b"1..2", b"/", b"..")
    )
    return _replace_value(data, el, value)


def drop_element(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Remove one top-level element (Rows, a UID, Pixel Data, anything)."""
    elements = [e for e in layout.top() if e.length != UNDEFINED or e.tag == PIXEL_DATA]
    if not elements:
        return None
    el = rng.choice(elements)
    if el.length == UNDEFINED:  # encapsulated Pixel Data: through its sequence delimiter
        end = next(
            (
                e.end
                for e in layout.elements
                if e.offset > el.offset and e.tag == SEQUENCE_DELIMITER
            ),
            len(data),
        )
        return data[: el.offset] + data[end:]
    return data[: el.offset] + data[el.end :]


def duplicate_element(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Repeat a top-level element elsewhere (duplicate tags, out of order)."""
    elements = [e for e in layout.top() if e.length != UNDEFINED and e.tag != PIXEL_DATA]
    if not elements:
        return None
    el = rng.choice(elements)
    blob = data[el.offset : el.end]
    at = rng.choice(layout.top()).offset
    return data[:at] + blob + data[at:]


def random_bytes_tail(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Append random bytes (a trailing partial element) after the data set."""
    return data + rng.randbytes(rng.choice((1, 3, 7, 8, 12, 100)))


def item_delimiter_out_of_place(data: bytes, layout: Layout, rng: random.Random) -> bytes | None:
    """Insert a stray item or sequence delimiter at a top-level element boundary."""
    top = layout.top()
    if not top:
        return None
    at = rng.choice(top).offset
    tag = rng.choice((ITEM_DELIMITER, SEQUENCE_DELIMITER, ITEM))
    blob = struct.pack("<HHL", tag >> 16, tag & 0xFFFF, rng.choice((0, 4, UNDEFINED)))
    return data[:at] + blob + data[at:]


MUTATIONS: dict[str, tuple[Mutation, int]] = {
    "bit_flip": (bit_flip, 10),
    "header_bit_flip": (header_bit_flip, 8),
    "truncate_at_boundary": (truncate_at_boundary, 10),
    "truncate_anywhere": (truncate_anywhere, 4),
    "wrong_length": (wrong_length, 6),
    "huge_length": (huge_length, 6),
    "undefined_length": (undefined_length, 4),
    "vr_swap": (vr_swap, 6),
    "undelimited_sequence": (undelimited_sequence, 3),
    "deep_nesting": (deep_nesting, 3),
    "broken_offset_table": (broken_offset_table, 4),
    "broken_item_tag": (broken_item_tag, 4),
    "fragment_length": (fragment_length, 4),
    "compressed_cut": (compressed_cut, 5),
    "compressed_garbage": (compressed_garbage, 6),
    "wrong_transfer_syntax": (wrong_transfer_syntax, 6),
    "meta_bit_flip": (meta_bit_flip, 1),
    "pixel_data_size": (pixel_data_size, 5),
    "odd_bits": (odd_bits, 6),
    "huge_dimensions": (huge_dimensions, 5),
    "bad_numbers": (bad_numbers, 4),
    "photometric": (photometric, 3),
    "bad_uid": (bad_uid, 3),
    "drop_element": (drop_element, 4),
    "duplicate_element": (duplicate_element, 2),
    "random_bytes_tail": (random_bytes_tail, 2),
    "item_delimiter_out_of_place": (item_delimiter_out_of_place, 2),
}
"""Every mutation by name, with its weight in `mutate`'s choice."""

STACK_PROBABILITY = 0.15
"""How often a second (and third) mutation is applied on top of the first."""


def mutate(data: bytes, rng: random.Random, *, names: list[str] | None = None) -> Mutant:
    """Apply one weighted-random applicable mutation (sometimes two or three, stacked).

    Parameters
    ----------
    data : bytes
        A valid Part 10 file.
    rng : random.Random
        The campaign's generator: the same state gives the same mutant.
    names : list of str, optional
        Restrict the choice to these mutations.

    Returns
    -------
    Mutant
        The mutated file and the mutation's name.
    """
    pool = [(n, MUTATIONS[n]) for n in (names or list(MUTATIONS))]
    weights = [w for _, (_, w) in pool]
    applied: list[str] = []
    current = data
    rounds = 1 + (rng.random() < STACK_PROBABILITY) + (rng.random() < STACK_PROBABILITY / 3)
    for _ in range(rounds):
        layout = scan(current)
        for _attempt in range(20):
            name, (func, _) = rng.choices(pool, weights)[0]
            out = func(current, layout, rng)
            if out is not None and out != current:
                applied.append(name)
                current = out
                break
    return Mutant("+".join(applied) or "none", current)
