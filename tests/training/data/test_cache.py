"""Preprocessing cache: same arrays as decoding, memory-mapped, invalidated on change, atomic."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from medtl.training.data import cache, generic
from medtl.training.data.covid19 import load as load_covid
from medtl.training.data.grazpedwri import load as load_graz
from medtl.training.data.luna16 import load as load_luna


def _arrays(splits):
    return [(p.ids, np.asarray(p.images), np.asarray(p.targets)) for _, p in splits.items()]


def _same(a, b):
    return all(
        x[0] == y[0] and np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2])
        for x, y in zip(a, b, strict=True)
    )


def test_cached_arrays_equal_decoded_ones(graz_root, luna, monkeypatch, cache_dir):
    for loader, root in ((load_graz, graz_root), (load_luna, luna["root"])):
        monkeypatch.setenv("MEDTL_CACHE_DIR", "off")
        decoded = _arrays(loader(root, image_size=24))
        monkeypatch.setenv("MEDTL_CACHE_DIR", str(cache_dir))
        first = loader(root, image_size=24)
        second = loader(root, image_size=24)
        assert isinstance(second.train.images, np.memmap)
        assert _same(decoded, _arrays(first)) and _same(decoded, _arrays(second))
    assert len(list((cache_dir / "grazpedwri").glob("*/images.npy"))) == 1


def test_hit_does_not_decode(covid_root, monkeypatch):
    load_covid(covid_root, image_size=16)

    def boom(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(generic, "read_gray", boom)
    assert sum(load_covid(covid_root, image_size=16).counts().values()) == 16
    with pytest.raises(AssertionError, match="decoded"):  # another size is another entry
        load_covid(covid_root, image_size=20)


def test_changed_source_invalidates(covid_root, cache_dir):
    first = load_covid(covid_root, image_size=16)
    sample_id = first.train.ids[0]
    path = next(covid_root.rglob(f"{sample_id}.png"))
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(path)
    later = time.time() + 5
    os.utime(path, (later, later))
    second = load_covid(covid_root, image_size=16)
    assert first.source_digest != second.source_digest
    assert (second.train.images[second.train.ids.index(sample_id)] == 255).all()
    assert not (first.train.images[0] == 255).all()
    assert (
        len([p for p in (cache_dir / "covid19").iterdir() if p.is_dir()]) == 1
    )  # stale entry pruned


def test_source_digest_depends_on_size_and_mtime(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"123")
    d1 = cache.source_digest(tmp_path, [f])
    assert cache.source_digest(tmp_path, [f]) == d1
    f.write_bytes(b"1234")
    assert cache.source_digest(tmp_path, [f]) != d1
    assert cache.source_digest(tmp_path, [tmp_path / "missing"]) != d1


def _entry():
    return cache.CacheEntry(
        arrays={"images": np.arange(48, dtype=np.uint8).reshape(3, 4, 4)}, meta={"kept": [0, 1, 2]}
    )


def test_concurrent_writers_build_once_and_agree(cache_dir):
    calls = []

    def build():
        calls.append(1)
        time.sleep(0.2)
        return _entry()

    results = []
    params = {"source": "x", "digest": "d", "size": 4}
    threads = [
        threading.Thread(target=lambda: results.append(cache.load_or_build("k", params, build)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(hit for _, hit in results) == [False, True]
    for entry, _ in results:
        assert np.array_equal(entry.arrays["images"], _entry().arrays["images"]) and entry.meta == {
            "kept": [0, 1, 2]
        }
    leftovers = [p.name for p in (cache_dir / "k").rglob("*.tmp")]
    assert leftovers == []


def test_corrupt_entry_is_rebuilt(cache_dir):
    params = {"source": "x", "digest": "d", "size": 4}
    cache.load_or_build("k", params, _entry)
    folder = cache_dir / "k" / cache.entry_key("k", params)
    (folder / "images.npy").write_bytes(b"garbage")
    entry, hit = cache.load_or_build("k", params, _entry)
    assert not hit and np.array_equal(entry.arrays["images"], _entry().arrays["images"])


def test_cache_can_be_disabled(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDTL_CACHE_DIR", "off")
    assert cache.cache_root() is None
    entry, hit = cache.load_or_build("k", {"source": "x", "digest": "d", "size": 4}, _entry)
    assert not hit and not isinstance(entry.arrays["images"], np.memmap)
    monkeypatch.delenv("MEDTL_CACHE_DIR")
    assert cache.cache_root() == cache.Path.home() / ".cache" / "medtl"


def test_seeds_share_the_source_digest_and_keep_their_entries(graz_root, cache_dir):
    a = load_graz(graz_root, image_size=16, seed=0)
    b = load_graz(graz_root, image_size=16, seed=1)
    assert a.source_digest == b.source_digest and a.digest != b.digest
    assert len([p for p in (cache_dir / "grazpedwri").iterdir() if p.is_dir()]) == 2


def test_subgroup_attributes_survive_a_cache_hit(graz_root, monkeypatch):
    first = load_graz(graz_root, image_size=16)

    def boom(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(generic, "read_gray", boom)
    second = load_graz(graz_root, image_size=16)  # a hit: nothing decoded
    assert isinstance(second.train.images, np.memmap)
    assert second.attribute_names == ("projection", "sex")
    for (_, a), (_, b) in zip(first.items(), second.items(), strict=True):
        assert a.ids == b.ids and a.attributes == b.attributes
