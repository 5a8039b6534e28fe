"""The probe runtime without BCC in the loop: images, their cache, maps read and written through
bpf(2), and a compile in a child that gives what a compile in-process gives."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import stat
from pathlib import Path

import pytest

from probes import bpfsys
from probes.cache import CacheUnsafe, ImageCache, KeyInputs, cache_key
from probes.compiler import CompileError, compile_image, compile_in_child
from probes.image import Function, Image, ImageError, MapSpec
from probes.runtime import Compiler, ProbeError, ProbeSet, ProbeSpec
from probes.table import Table, ctype_of

PROGRAM = """
struct pair { u64 a; u32 b; u32 c; };
BPF_HASH(things, u32, struct pair, 64);
BPF_ARRAY(slots, u64, 8);
BPF_PERCPU_ARRAY(per_cpu, struct pair, 4);
BPF_PERCPU_ARRAY(probe_drops, u64, 8);
int touch(void *ctx) { u32 k = 0; u64 *v = slots.lookup(&k); if (v) (*v)++; return 0; }
"""


def _image() -> Image:
    spec = MapSpec("m", bpfsys.MAP_ARRAY, 4, 8, 1, 0, "unsigned int", "unsigned long long")
    # r1 = map (ld_imm64, two slots), r0 = 0, exit
    code = bytes([0x18, 0x11, 0, 0, 0, 0, 0, 0]) + bytes(8)
    code += bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
    return Image((spec,), (Function("f", code, ((0, "m"),)),), "GPL")


def test_an_image_survives_its_bytes_and_refuses_broken_ones() -> None:
    image = _image()
    assert Image.from_json(image.to_json()) == image
    with pytest.raises(ImageError):
        Image.from_json(b'{"format": 999}')
    with pytest.raises(ImageError):
        Image.from_json(image.to_json().replace(b'"m"]]]', b'"nope"]]]'))  # unknown map
    broken = Image(image.maps, (Function("f", image.functions[0].insns, ((2, "m"),)),), "GPL")
    with pytest.raises(ImageError, match="not a 64-bit load"):
        broken.check()


def test_type_descriptions_become_ctypes_of_the_right_size() -> None:
    desc = ["pair", [["a", "unsigned long long"], ["b", "char", [3]], ["c", "int"]], "struct"]
    pair = ctype_of(desc)
    assert ctypes.sizeof(pair) == 16
    assert [name for name, *_ in pair._fields_] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unknown scalar"):
        ctype_of("float128")


def test_the_cache_key_follows_every_input(tmp_path: Path) -> None:
    inputs = KeyInputs("1.0", tmp_path / "btf", None, tmp_path / "build")
    key = cache_key("int x;", ["-DA=1"], inputs)
    assert key == cache_key("int x;", ["-DA=1"], inputs)
    assert key != cache_key("int x;", ["-DA=2"], inputs)
    assert key != cache_key("int y;", ["-DA=1"], inputs)
    assert key != cache_key("int x;", ["-DA=1"], dataclasses.replace(inputs, bcc_version="1.1"))
    (tmp_path / "btf").write_bytes(b"other kernel")
    assert key != cache_key("int x;", ["-DA=1"], inputs)


def test_the_cache_keeps_images_only_where_nobody_else_can_write(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    assert cache.get("k") is None  # nothing yet: a miss, not an error
    cache.put("k", _image())
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert cache.get("k") == _image()
    (tmp_path / "cache" / "bad.image").write_bytes(b"not json")
    os.chmod(tmp_path / "cache" / "bad.image", 0o600)
    assert cache.get("bad") is None  # not an image: compile again
    os.chmod(tmp_path / "cache" / "k.image", 0o666)
    with pytest.raises(CacheUnsafe, match="open to others"):
        cache.get("k")
    os.chmod(tmp_path / "cache" / "k.image", 0o600)
    os.chmod(tmp_path / "cache", 0o755)
    with pytest.raises(CacheUnsafe, match="open to others"):
        cache.get("k")
    os.chmod(tmp_path / "cache", 0o700)
    os.chown(tmp_path / "cache", 65534, 65534)
    with pytest.raises(CacheUnsafe, match="owned by uid 65534"):
        cache.get("k")


@pytest.mark.needs_bpf
def test_maps_through_bpf2_behave_as_mappings() -> None:
    image = compile_image(PROGRAM, [])
    from probes.loader import LoadedImage, LoadError

    loaded = LoadedImage(image)
    try:
        things = loaded.table("things")
        assert isinstance(things, Table)
        pair = things.Leaf(a=1, b=2, c=3)
        things[ctypes.c_uint32(7)] = pair
        assert (things[ctypes.c_uint32(7)].a, things[7].c) == (1, 3)
        assert [k.value for k in things] == [7]
        assert [(k, v.b) for k, v in things.items_lookup_batch()] == [(7, 2)]
        del things[ctypes.c_uint32(7)]
        with pytest.raises(KeyError):
            things[ctypes.c_uint32(7)]
        with pytest.raises(KeyError):
            del things[ctypes.c_uint32(7)]
        slots = loaded.table("slots")
        slots[3] = ctypes.c_uint64(9)
        assert len(slots) == 8
        assert slots[3].value == 9
        slots.clear()
        assert slots[3].value == 0
        per_cpu = loaded.table("per_cpu")
        values = per_cpu.Leaf()
        values[0] = per_cpu.sLeaf(a=5)
        per_cpu[1] = values
        assert per_cpu[1][0].a == 5
        assert sum(v.a for v in per_cpu[1]) == 5
        with pytest.raises(LoadError, match="no map nope"):
            loaded.table("nope")
    finally:
        loaded.close()


SPARSE = """
struct owner { u64 id; u32 a; u32 b; };
BPF_ARRAY(owners, struct owner, 20000);
int touch(void *ctx) { u32 k = 0; struct owner *o = owners.lookup(&k); if (o) o->a++; return 0; }
"""


@pytest.mark.needs_bpf
def test_nonzero_items_finds_exactly_the_used_slots_across_chunks() -> None:
    # 20,000 slots of 16 bytes are read in two chunks: used slots at both ends of each chunk,
    # and values whose only non-zero byte is their last, must all be found, and nothing else.
    from probes.loader import LoadedImage

    loaded = LoadedImage(compile_image(SPARSE, []))
    try:
        owners = loaded.table("owners")
        chunk = bpfsys._BATCH_BYTES // ctypes.sizeof(owners.Leaf)
        used = {0: (1, 0, 0), chunk - 1: (0, 0, 1 << 24), chunk: (0, 1, 0), 19_999: (7, 0, 0)}
        used[12_345] = (0, 0, 1)
        for slot, (ident, a, b) in used.items():
            owners[slot] = owners.Leaf(id=ident, a=a, b=b)
        found = {k: (v.id, v.a, v.b) for k, v in owners.nonzero_items()}
        assert found == used
        assert sum(1 for _ in owners.items_lookup_batch()) == 20_000
        owners.clear()
        assert list(owners.nonzero_items()) == []
    finally:
        loaded.close()


@pytest.mark.needs_bpf
def test_a_compile_in_a_child_gives_what_one_in_process_gives() -> None:
    here = compile_image(PROGRAM, ["-DX=1"])
    there = compile_in_child(PROGRAM, ["-DX=1"])
    assert there == here
    with pytest.raises(CompileError):
        compile_in_child("this is not C", [])


@pytest.mark.needs_bpf
def test_a_restart_loads_the_cached_image_and_a_refused_one_is_compiled_again(
    tmp_path: Path,
) -> None:
    source = tmp_path / "probe.bpf.c"
    source.write_text(PROGRAM)
    spec = ProbeSpec(name="p", source=str(source), drops="probe_drops")
    inputs = KeyInputs("test", tmp_path / "no-btf", None, tmp_path / "no-headers")
    compiler = Compiler(in_child=True, cache=ImageCache(tmp_path / "cache"), key_inputs=inputs)

    def start() -> ProbeSet:
        probes = ProbeSet([spec], [], compiler=compiler)
        probes.load()
        probes.close()
        return probes

    assert start().report.image == "compiled"
    assert start().report.image == "cache"
    # An image the kernel refuses (here: a map no kernel creates) is compiled afresh.
    (key_file,) = (tmp_path / "cache").glob("*.image")
    image = Image.from_json(key_file.read_bytes())
    broken = dataclasses.replace(
        image, maps=tuple(dataclasses.replace(m, type=999) for m in image.maps)
    )
    key_file.write_bytes(broken.to_json())
    again = start()
    assert again.report.image == "compiled"
    assert "compiled afresh" in again.report.cache_note
    with pytest.raises(ProbeError, match="not loaded"):
        again.table("probe_drops")  # closed: nothing is left behind
