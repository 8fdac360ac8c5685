"""Every source on small files in the real formats; bad input gives errors naming file and record."""
from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pytest

from formats import (png_bytes, write_cifar10, write_cifar100, write_idx, write_imagefolder,
                     write_list_dataset, write_shard)
from ltaug.config import load_config
from ltaug.data import load_dataset
from ltaug.data.shards import UnsafeShardError, read_shards
from ltaug.data.sources import SOURCES, DataError

ROOT = Path(__file__).resolve().parents[2]


def dcfg(*sets):
    return load_config(None, list(sets)).data


def test_digits_default_is_embedded_and_long_tailed():
    d = load_dataset(dcfg())
    assert d.num_classes == 10 and d.train.images.shape[1:] == (16, 16, 1)
    c = d.train.counts.counts
    assert c[0] / c[-1] == pytest.approx(10, rel=0.1) and list(c) == sorted(c, reverse=True)
    assert set(d.test.counts.counts) == {50}
    x, y = d.train.tensors()
    assert x.shape == (len(d.train), 1, 16, 16) and x.min() >= -1 and x.max() <= 1 and x.max() > 0.9


def test_cifar10_any_batch_length(tmp_path):
    write_cifar10(tmp_path, per_class_train=30, per_class_test=5, batches=3)
    s = SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}", "data.image_size=8"), "train")
    assert s.images.shape == (300, 8, 8, 3) and s.counts.counts == (30,) * 10
    assert s.class_names[3] == "c3"
    d = load_dataset(dcfg("data.source=cifar10", f"data.root={tmp_path}/cifar-10-batches-py",
                          "data.imbalance_ratio=10", "data.image_size=32", "data.val_per_class=0"))
    assert d.train.counts.counts == tuple(int(np.floor(30 * 0.1 ** (k / 9))) for k in range(10))
    assert d.test.counts.counts == (5,) * 10


def test_cifar10_pixels_are_preserved_at_native_size(tmp_path):
    d = write_cifar10(tmp_path, 2, 1, batches=1)
    raw = pickle.load(open(d / "data_batch_1", "rb"), encoding="bytes")
    s = SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}", "data.image_size=32"), "train")
    assert np.array_equal(s.images[0], raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar100(tmp_path):
    write_cifar100(tmp_path, 3, 1)
    s = SOURCES["cifar100"](dcfg("data.source=cifar100", f"data.root={tmp_path}", "data.image_size=8"), "train")
    assert s.num_classes == 100 and len(s) == 300 and s.class_names[99] == "f99"


def test_cifar_truncated_pickle_names_file(tmp_path):
    d = write_cifar10(tmp_path, 5, 1, batches=2)
    data = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"data_batch_2.*truncated"):
        SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}"), "train")


def test_cifar_pickle_with_code_is_refused(tmp_path):
    d = write_cifar10(tmp_path, 2, 1, batches=1)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "data_batch_1").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="forbidden global"):
        SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}"), "train")


def test_cifar_label_out_of_range_error_or_counted_skip(tmp_path):
    d = write_cifar10(tmp_path, 3, 1, batches=1)
    b = pickle.load(open(d / "data_batch_1", "rb"), encoding="bytes")
    b[b"labels"][4] = 12
    pickle.dump(b, open(d / "data_batch_1", "wb"))
    with pytest.raises(DataError, match=r"data_batch_1: record 4 has label 12"):
        SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}"), "train")
    s = SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}", "data.on_bad_record=skip"), "train")
    assert len(s) == 29 and s.skipped == 1


def test_cifar_wrong_shape(tmp_path):
    d = write_cifar10(tmp_path, 2, 1, batches=1)
    b = pickle.load(open(d / "data_batch_1", "rb"), encoding="bytes")
    b[b"data"] = b[b"data"][:, :100]
    pickle.dump(b, open(d / "data_batch_1", "wb"))
    with pytest.raises(DataError, match=r"data_batch_1: 'data' has shape \(20, 100\)"):
        SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}"), "train")


def test_missing_dataset_lists_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"data_batch_1.*never downloads"):
        SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={tmp_path}"), "train")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte"):
        SOURCES["mnist"](dcfg("data.source=mnist", f"data.root={tmp_path}"), "train")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_raw(tmp_path, gz):
    write_idx(tmp_path / "raw", 4, 2, gz=gz)
    for src in ("mnist", "fashion_mnist"):
        s = SOURCES[src](dcfg(f"data.source={src}", f"data.root={tmp_path}", "data.image_size=14"), "train")
        assert s.images.shape == (40, 14, 14, 1) and s.counts.counts == (4,) * 10
    s = SOURCES["mnist"](dcfg("data.source=mnist", f"data.root={tmp_path}", "data.image_size=28"), "test")
    assert len(s) == 20


def test_idx_wrong_magic_and_truncation(tmp_path):
    write_idx(tmp_path, 2, 1, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(b"\x00\x00\x08\x01" + raw[4:])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: wrong IDX magic 0x00000801"):
        SOURCES["mnist"](dcfg("data.source=mnist", f"data.root={tmp_path}"), "train")
    p.write_bytes(raw[:-50])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: .* truncated"):
        SOURCES["mnist"](dcfg("data.source=mnist", f"data.root={tmp_path}"), "train")
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:100])
    with pytest.raises(DataError, match=r"corrupt or truncated gzip"):
        SOURCES["mnist"](dcfg("data.source=mnist", f"data.root={tmp_path}"), "train")


def test_imagefolder_colour_and_gray(tmp_path):
    write_imagefolder(tmp_path, {"cat": 6, "dog": 3, "eel": 2}, "train")
    write_imagefolder(tmp_path, {"cat": 2, "dog": 2, "eel": 2}, "val")
    d = load_dataset(dcfg("data.source=imagefolder", f"data.root={tmp_path}", "data.image_size=8", "data.imbalance_ratio=1",
                          "data.val_per_class=0"))
    assert d.train.class_names == ("cat", "dog", "eel") and d.train.counts.counts == (6, 3, 2)
    assert d.train.images.shape == (11, 8, 8, 3) and len(d.test) == 6
    s = SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={tmp_path}", "data.channels=1"), "train")
    assert s.channels == 1


def test_imagefolder_corrupt_image_and_empty_class(tmp_path):
    write_imagefolder(tmp_path, {"a": 3, "b": 3}, "train")
    (tmp_path / "train" / "b" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"b/0002.png: cannot decode image"):
        SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={tmp_path}"), "train")
    s = SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={tmp_path}", "data.on_bad_record=skip"), "train")
    assert len(s) == 5 and s.skipped == 1
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match=r"class 'c' has no images"):
        SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={tmp_path}"), "train")


def test_truncated_jpeg_is_an_error(tmp_path):
    write_imagefolder(tmp_path, {"a": 2}, "train")
    p = tmp_path / "train" / "a" / "0001.jpg"
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match=r"0001.jpg"):
        SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={tmp_path}"), "train")


def test_imagenet_lt_list_files(tmp_path):
    write_list_dataset(tmp_path, {0: 5, 1: 3, 2: 1}, "ImageNet_LT_train.txt")
    write_list_dataset(tmp_path, {0: 2, 1: 2, 2: 2}, "ImageNet_LT_test.txt", seed=1)
    d = load_dataset(dcfg("data.source=imagenet_lt", f"data.root={tmp_path}", "data.imbalance_ratio=1", "data.image_size=8",
                          "data.val_per_class=0"))
    assert d.train.counts.counts == (5, 3, 1) and d.test.counts.counts == (2, 2, 2)
    assert d.train.images.shape[1:] == (8, 8, 3)


def test_list_file_with_missing_image_names_it(tmp_path):
    write_list_dataset(tmp_path, {0: 2, 1: 2}, "ImageNet_LT_train.txt")
    with open(tmp_path / "ImageNet_LT_train.txt", "a") as fh:
        fh.write("images/n0001/nothere.jpg 1\n")
    with pytest.raises(DataError, match=r"nothere.jpg: image file not found"):
        SOURCES["imagenet_lt"](dcfg("data.source=imagenet_lt", f"data.root={tmp_path}"), "train")
    s = SOURCES["imagenet_lt"](dcfg("data.source=imagenet_lt", f"data.root={tmp_path}", "data.on_bad_record=skip"), "train")
    assert len(s) == 4 and s.skipped == 1
    with open(tmp_path / "ImageNet_LT_train.txt", "a") as fh:
        fh.write("../../etc/passwd 0\n")
    with pytest.raises(DataError, match=r"ImageNet_LT_train.txt:\d+: path .* escapes"):
        SOURCES["imagenet_lt"](dcfg("data.source=imagenet_lt", f"data.root={tmp_path}"), "train")


def test_label_out_of_range_in_list(tmp_path):
    write_list_dataset(tmp_path, {0: 2, 1: 2}, "ImageNet_LT_train.txt")
    with pytest.raises(DataError, match=r"record \d+ has label 1, outside 0..0"):
        SOURCES["imagenet_lt"](dcfg("data.source=imagenet_lt", f"data.root={tmp_path}", "data.num_classes=1"), "train")


def _samples(n, label_of=lambda i: i % 3, size=6):
    rng = np.random.RandomState(0)
    return [(f"s{i:05d}", rng.randint(0, 256, (size, size, 3), dtype=np.uint8), label_of(i)) for i in range(n)]


def test_webdataset_source_and_shards(tmp_path):
    write_shard(tmp_path / "train" / "a-000000.tar", _samples(9))
    write_shard(tmp_path / "train" / "a-000001.tar", _samples(3, lambda i: 0))
    write_shard(tmp_path / "test" / "b-000000.tar", _samples(6))
    d = load_dataset(dcfg("data.source=webdataset", f"data.root={tmp_path}", "data.imbalance_ratio=1", "data.image_size=6",
                          "data.val_per_class=0"))
    assert d.train.counts.counts == (6, 3, 3) and d.test.counts.counts == (2, 2, 2)
    s, meta = read_shards(str(tmp_path / "train"), 6, with_meta=True)
    assert len(meta) == 12 and meta[0] == {"class": 0}
    assert np.array_equal(s.images[1], _samples(9)[1][1])  # PNG round trip is lossless


def test_shard_rejects_parent_paths(tmp_path):
    write_shard(tmp_path / "x.tar", _samples(2), extra={"../evil.png": png_bytes(np.zeros((4, 4, 3), np.uint8))})
    with pytest.raises(UnsafeShardError, match=r"x.tar: member '../evil.png'"):
        read_shards(str(tmp_path), 6)


def test_shard_bad_sample_names_key(tmp_path):
    write_shard(tmp_path / "x.tar", _samples(2), extra={"lonely.png": png_bytes(np.zeros((4, 4, 3), np.uint8))})
    with pytest.raises(DataError, match=r"x.tar key 'lonely'"):
        read_shards(str(tmp_path), 6)
    s = read_shards(str(tmp_path), 6, on_bad="skip")
    assert len(s) == 2 and s.skipped == 1
    (tmp_path / "y.tar").write_bytes((tmp_path / "x.tar").read_bytes()[:1500])
    with pytest.raises(DataError, match=r"y.tar"):
        read_shards(str(tmp_path / "y.tar"), 6)


def test_real_mnist(mnist_dir):
    d = load_dataset(dcfg("data.source=mnist", f"data.root={mnist_dir}", "data.imbalance_ratio=100"))
    c = d.train.counts.counts
    n_max = 1539  # smallest class of the shared 17,435-image train subset
    assert c == tuple(int(np.floor(n_max * 0.01 ** (k / 9))) for k in range(10))
    assert len(d.test) == 10_000 and d.train.images.shape[1:] == (16, 16, 1)
    assert d.groups["few"] == [9] and 0 in d.groups["many"]
    assert 0.05 < d.train.images.mean() / 255 < 0.3  # real digits: mostly dark background


def test_inspect_data_job_on_cifar_dir(tmp_path):
    write_cifar10(tmp_path / "c", per_class_train=40, per_class_test=4, batches=2)
    out = subprocess.run([sys.executable, "jobs/inspect_data.py", "--config", "configs/quickstart.yaml",
                          "--set", "data.source=cifar10", "--set", f"data.root={tmp_path / 'c'}",
                          "--set", "data.imbalance_ratio=10", "--set", f"run.output_dir={tmp_path / 'runs'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    profile = [int(np.floor(40 * 0.1 ** (k / 9))) for k in range(10)]
    # validation (20 per class): from the 40 - n_c unused images first, the rest held out of train (<= 20 %)
    held = [min(20 - min(20, 40 - n), int(0.2 * n)) for n in profile]
    assert summary["val_held_out"] == held and held[0] == 8 and held[-1] == 0
    assert summary["train_counts"] == [n - h for n, h in zip(profile, held)]
    assert summary["val_counts"] == [min(20, 40 - n) + h for n, h in zip(profile, held)]
    assert summary["test_counts"] == [4] * 10
    assert set(summary["groups"]) == {"many", "medium", "few"}
    assert (run_dir / "class_histogram.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "mlflow.db").exists()


# --- your own data is safe: natural distribution by default, loud drops, no emptied classes -------------

def test_own_imagefolder_keeps_its_natural_long_tail_by_default(tmp_path, caplog):
    """An already long-tailed ImageFolder is never re-cut unless asked (0 = the source's default = natural)."""
    write_imagefolder(tmp_path, {"ant": 3, "bee": 40, "cat": 12}, "train", size=6)
    write_imagefolder(tmp_path, {"ant": 2, "bee": 2, "cat": 2}, "test", size=6)
    cfg = dcfg("data.source=imagefolder", f"data.root={tmp_path}", "data.image_size=6", "data.val_per_class=0")
    assert cfg.imbalance_ratio == 0 and cfg.ratio == 1.0
    d = load_dataset(cfg)
    assert list(d.train.counts.counts) == [3, 40, 12] and d.train.class_names == ("ant", "bee", "cat")
    assert d.profile["dropped_images"] == 0 and d.profile["profile"] == "natural" and not d.profile["warning"]
    assert dcfg().ratio == 10.0 and dcfg("data.source=cifar10", "data.root=x").ratio == 10.0   # benchmarks: as before


def test_profile_emptying_a_class_is_an_error_naming_class_and_keys(tmp_path):
    write_imagefolder(tmp_path, {"ant": 3, "bee": 40, "cat": 12}, "train", size=6)
    write_imagefolder(tmp_path, {"ant": 2, "bee": 2, "cat": 2}, "test", size=6)
    with pytest.raises(DataError) as e:
        load_dataset(dcfg("data.source=imagefolder", f"data.root={tmp_path}", "data.image_size=6",
                          "data.imbalance_ratio=10"))           # n_max = 3 (smallest class): 3 / 10 floors to 0
    msg = str(e.value)
    assert "class 1 ('bee'), 2 ('cat') with 0 images" in msg
    assert "data.imbalance_ratio" in msg and "data.max_per_class" in msg


def test_profile_dropping_most_images_warns_with_counts_everywhere(tmp_path, caplog):
    from ltaug.data import build_artifact, open_artifact

    write_imagefolder(tmp_path, {"ant": 30, "bee": 30, "cat": 30}, "train", size=6)
    write_imagefolder(tmp_path, {"ant": 2, "bee": 2, "cat": 2}, "test", size=6)
    cfg = dcfg("data.source=imagefolder", f"data.root={tmp_path}", "data.image_size=6", "data.imbalance_ratio=10",
               "data.val_per_class=0")
    with caplog.at_level("WARNING", logger="ltaug.data"):
        d = load_dataset(cfg)
    assert list(d.train.counts.counts) == [30, 9, 3]
    assert d.profile["source_images"] == 90 and d.profile["kept_images"] == 42 and d.profile["dropped_images"] == 48
    assert "keeps 42 of the 90" in d.profile["warning"] and "data.imbalance_ratio=1" in d.profile["warning"]
    assert "keeps 42 of the 90" in caplog.text
    uri = build_artifact(cfg, str(tmp_path / "cache"))
    meta = json.loads((Path(uri) / "meta.json").read_text())
    assert meta["profile"]["dropped_images"] == 48 and meta["profile"]["warning"]
    assert open_artifact(uri).profile["warning"] == d.profile["warning"]


def test_default_ratio_shares_the_artifact_of_the_explicit_default():
    from ltaug.data import dataset_digest

    assert dataset_digest(dcfg()) == dataset_digest(dcfg("data.imbalance_ratio=10"))
    assert dataset_digest(dcfg()) != dataset_digest(dcfg("data.imbalance_ratio=1"))


def test_unreadable_root_is_checked_before_decoding(tmp_path):
    import os

    write_imagefolder(tmp_path, {"ant": 3}, "train", size=6)
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    os.chmod(tmp_path, 0o000)
    try:
        with pytest.raises(DataError, match="data.root: .*permission denied"):
            load_dataset(dcfg("data.source=imagefolder", f"data.root={tmp_path}"))
    finally:
        os.chmod(tmp_path, 0o755)


def test_decoding_shows_progress_for_large_inputs(tmp_path, monkeypatch, capsys):
    from ltaug.data.sources import images

    monkeypatch.setattr(images, "PROGRESS_MIN", 2)
    write_imagefolder(tmp_path, {"ant": 3, "bee": 2}, "train", size=6)
    SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={tmp_path}", "data.image_size=6"), "train")
    assert "imagefolder[train]" in capsys.readouterr().err
