"""Hostile and careless input, class by class (issue "Hostile and careless input"); the corpus files are written
in their real formats by make_corpus.py. Each case: a clear error naming the file / record / key, or a counted
skip with data.on_bad_record=skip; never a silently wrong result, a hang or a memory bomb."""
from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from ltaug import storage
from ltaug.config import ConfigError, config_to_yaml, flat_params, load_config, public_dict
from ltaug.data.shards import read_shards
from ltaug.data.sources import SOURCES, DataError

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "generate"))


def dcfg(*sets):
    return load_config(None, list(sets)).data


# ----------------------------------------------------------------------------------- silent wrong data

READER_CASES = [
    # (source, corpus dir, error regex, records left with on_bad_record=skip, or None when the file is refused)
    ("cifar10", "cifar_float_labels", r"data_batch_1: 'labels': labels have dtype float64 \(record 0", None),
    ("cifar10", "cifar_float_pixels", r"data_batch_1: 'data': pixels have dtype float64; expected uint8", None),
    ("cifar10", "cifar_wide_pixels", r"data_batch_1: 'data': pixel values 300..300 .* outside 0..255", None),
    ("imagefolder", "folder_devzero", r"a/zero.png: not a regular file", 2),
    ("imagefolder", "folder_png_bomb", r"b/bomb.png: .*(100000x100000 pixels|10000000000 pixels).*(limit|bomb)", 2),
    ("imagefolder", "folder_test_names", None, None),      # train split is fine; test below
    ("imagenet_lt", "list_dir_entry", r"img/sub.jpg: is a directory, expected a file", 1),
    ("imagenet_lt", "list_huge_label", r"ImageNet_LT_train.txt:2: record 2 has label 999999999, outside 0..99999", 1),
    ("mnist", "idx_gzip_bomb", r"train-images-idx3-ubyte.gz: \d+ bytes inflate to more than", None),
]


@pytest.mark.parametrize("source, folder, error, left", READER_CASES, ids=[c[1] for c in READER_CASES])
def test_reader_refuses_or_counts(source, folder, error, left):
    root = CORPUS / folder
    if error is None:
        SOURCES[source](dcfg(f"data.source={source}", f"data.root={root}"), "train")
        return
    with pytest.raises(DataError, match=error):
        SOURCES[source](dcfg(f"data.source={source}", f"data.root={root}"), "train")
    if left is not None:
        s = SOURCES[source](dcfg(f"data.source={source}", f"data.root={root}", "data.on_bad_record=skip"), "train")
        assert len(s) == left and s.skipped >= 1


def test_cifar_stray_backup_is_not_read_twice():
    s = SOURCES["cifar10"](dcfg("data.source=cifar10", f"data.root={CORPUS / 'cifar_stray_bak'}"), "train")
    assert len(s) == 10


def test_16bit_png_is_scaled_not_saturated():
    s = SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={CORPUS / 'folder_png16'}",
                                    "data.image_size=8", "data.channels=1"), "train")
    deep = s.images[s.labels == 0]
    assert len(s) == 3
    assert set(np.unique(deep[0])) | set(np.unique(deep[1])) >= {round(30000 / 257)}
    assert not (deep == 255).all(axis=(1, 2, 3)).any()


def test_hidden_folders_and_files_are_not_data():
    s = SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={CORPUS / 'folder_hidden_dir'}"), "train")
    assert s.num_classes == 2 and s.class_names == ("a", "b") and len(s) == 2


def test_test_class_names_are_compared_with_train():
    with pytest.raises(DataError, match=r"class folder\(s\) \['emu'\] are not classes of .*train"):
        SOURCES["imagefolder"](dcfg("data.source=imagefolder", f"data.root={CORPUS / 'folder_test_names'}"), "test")


SHARD_CASES = [
    ("shard_dup_member", r"part-0.tar: member 's000.cls' repeats key 's000'", None),
    ("shard_dup_key", r"part-0.tar: key 's000' is not contiguous", None),
    ("shard_huge_cls", r"part-0.tar key 's001': label 999999999 out of range", 1),
    ("shard_dup_json_key", r"s000'.json: repeated key 'class'", 0),
]


@pytest.mark.parametrize("folder, error, left", SHARD_CASES, ids=[c[0] for c in SHARD_CASES])
def test_shard_reader_refuses_or_counts(folder, error, left):
    root = CORPUS / folder
    with pytest.raises(DataError, match=error):
        read_shards(str(root / "train"), 8, with_meta=True)
    if left is not None:
        s, _ = read_shards(str(root / "train"), 8, on_bad="skip", with_meta=True)
        assert len(s) == left and s.skipped >= 1


def test_compressed_shards_are_read_not_skipped():
    s = SOURCES["webdataset"](dcfg("data.source=webdataset", f"data.root={CORPUS / 'shard_targz'}"), "train")
    assert len(s) == 4 and s.labels.tolist() == [0, 1, 0, 1]


def test_truncated_targz_is_an_error(tmp_path):
    data = (CORPUS / "shard_targz" / "train" / "part-0.tar.gz").read_bytes()
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.tar.gz: truncated or corrupt"):
        read_shards(str(tmp_path / "train"), 8)


def test_unsupported_compression_is_named(tmp_path):
    (tmp_path / "a.tar.zst").write_bytes(b"(\xb5/\xfd")
    with pytest.raises(DataError, match=r"a.tar.zst: a tar with an unsupported compression"):
        read_shards(str(tmp_path), 8)


# ------------------------------------------------------------------------------- incomplete outputs


def test_unfinished_generation_output_is_refused():
    with pytest.raises(DataError, match=r"unfinished generation output .*no manifest.json; 1 shard"):
        read_shards(str(CORPUS / "shard_unfinished"), 8)


def test_plain_shards_without_manifest_warn(caplog, tmp_path):
    with caplog.at_level("WARNING", logger="ltaug.data"):
        s = read_shards(str(CORPUS / "shard_targz" / "train"), 8)
    assert len(s) == 4 and "no manifest.json" in caplog.text


# ----------------------------------------------------------------------------------------- configs

CONFIG_CASES = [
    ("alias_bomb.yaml", r"YAML alias at tune.space.b\[0\].*not allowed"),
    ("recursive_alias.yaml", r"YAML alias at tune.space.again"),
    ("huge_int.yaml", r"train.steps: 99999999999999999999999999 is too large"),
    ("big_seed.yaml", r"seed: 18446744073709551616 is too large"),
    ("dup_section.yaml", r"duplicate key 'train' \(lines 1 and 5\)"),
]


@pytest.mark.parametrize("name, error", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_hostile_configs_are_named(name, error):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.") + ": " + error):
        load_config(CORPUS / "configs" / name)


def test_alias_bomb_in_override_is_refused():
    bomb = "tune.space={a: &a [1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a], c: [*b,*b,*b,*b,*b,*b,*b,*b]}"
    with pytest.raises(ConfigError, match=r"--set tune.space: YAML alias"):
        load_config(None, [bomb])


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory"):
        load_config(str(tmp_path))


def test_shard_json_repeated_key_via_storage():
    with pytest.raises(ValueError, match=r"where: repeated key 'a'"):
        storage.load_json(b'{"a": 1, "a": 2}', "where")


# --------------------------------------------------------------------------------------- secrets


SECRET_URI = "http://alice:hunter2-Pa55@mlflow.example:5000"


def test_uri_credentials_redacted_in_config_dumps_params_and_checkpoint_config():
    cfg = load_config(None, [f"tracking.uri={SECRET_URI}", "model.checkpoint=https://tok-Zq81x@host/m.pt"])
    assert cfg.tracking.uri == SECRET_URI            # the tracker still gets the real URI
    for blob in (config_to_yaml(cfg), json.dumps(flat_params(cfg)), json.dumps(public_dict(cfg))):
        assert "hunter2-Pa55" not in blob and "tok-Zq81x" not in blob
        assert "alice:***@mlflow.example" in blob


def test_uri_credentials_redacted_in_run_config_and_summary(tmp_path):
    from ltaug.stages import open_run

    cfg = load_config(None, [f"tracking.uri={SECRET_URI}", f"run.output_dir={tmp_path}"])
    run = open_run(cfg, "t", tracked=False)
    run.write_json("summary.json", {"uri": SECRET_URI, "nested": [f"{SECRET_URI}/x?token=abc123"]})
    for p in Path(run.dir).rglob("*"):
        if p.is_file():
            text = p.read_text()
            assert "hunter2" not in text and "abc123" not in text, p


def test_uri_credentials_redacted_in_dry_run(capsys):
    from ltaug.cli import job_main

    assert job_main("x", "d", lambda *a: {}, ["--set", f"tracking.uri={SECRET_URI}", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err and "alice:***@" in out.out


def test_uri_credentials_redacted_in_mlflow_params_and_tags(tmp_path):
    from ltaug.track import make_tracker

    tr = make_tracker(f"sqlite:///{tmp_path}/m.db", str(tmp_path), "e", "r")
    tr.log_params({"tracking.uri": SECRET_URI})
    tr.set_tags({"where": SECRET_URI})
    run = tr.client.get_run(tr.run_id)
    assert "hunter2" not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    tr.close()


# ---------------------------------------------------------------------------- errors, not tracebacks


def test_write_to_file_parent_and_unwritable_dir(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(storage.StorageError, match=r"cannot write .*afile/out.bin: a parent of this path is a file"):
        storage.write_bytes(str(f / "out.bin"), b"data")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(storage.StorageError, match=r"permission denied"):
            storage.write_bytes(str(ro / "x.bin"), b"data")


def test_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(storage.StorageError, match=r"cannot write .*x.bin: no space left on the device"):
        storage.write_bytes(str(tmp_path / "x.bin"), b"data" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert os.listdir(tmp_path) == []


def test_read_refuses_device_and_directory(tmp_path):
    (tmp_path / "z.png").symlink_to("/dev/zero")
    with pytest.raises(storage.StorageError, match=r"z.png: not a regular file"):
        storage.read_bytes(str(tmp_path / "z.png"))
    with pytest.raises(storage.StorageError, match=r"is a directory"):
        storage.read_bytes(str(tmp_path))
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(storage.InputTooLargeError, match=r"big: 100 bytes, more than the 10-byte limit"):
        storage.read_bytes(str(tmp_path / "big"), max_bytes=10)


def test_cli_output_dir_that_is_a_file(tmp_path, capsys):
    from ltaug.cli import job_main

    f = tmp_path / "runs"
    f.write_text("x")
    rc = job_main("x", "d", lambda *a: {}, ["--set", f"run.output_dir={f}", "--set", "tracking.uri=none"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "run.output_dir=" in err and "Traceback" not in err


def test_cli_storage_client_errors_are_one_line(capsys):
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from ltaug.cli import job_main

    for exc, text in ((NoCredentialsError(), "no AWS credentials"),
                      (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "cannot reach endpoint")):
        def body(*a, exc=exc):
            raise exc
        rc = job_main("x", "d", body, ["--set", "tracking.uri=none", "--set", f"run.output_dir={ROOT}/.pytest-runs"])
        err = capsys.readouterr().err
        assert rc == 2 and text in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ two writers, one output


def _plan(seed: int):
    from ltaug.generate import GenerationPlan

    return GenerationPlan.from_counts((8, 2), 8, 0, seed, 4, {"x": 1})


def _race(out: str, trials_seed: int) -> int:
    """Two threads claim ``out`` with different plans at once; returns how many won (must be 1)."""
    from ltaug.generate.manifest import PlanConflictError, claim_output

    wins, barrier = [], threading.Barrier(2)

    def claim(seed):
        barrier.wait()
        try:
            claim_output(out, _plan(seed))
            wins.append(seed)
        except PlanConflictError:
            pass

    ts = [threading.Thread(target=claim, args=(trials_seed + k,)) for k in (0, 1000)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return len(wins)


def test_claim_is_atomic_locally(tmp_path):
    lost = sum(_race(str(tmp_path / f"o{i}"), i) != 1 for i in range(100))
    assert lost == 0


@pytest.mark.s3
def test_claim_is_atomic_on_s3(s3):
    lost = sum(_race(f"{s3}/o{i}", i) != 1 for i in range(100))
    assert lost == 0


@pytest.mark.s3
def test_create_exclusive_on_s3(s3):
    assert storage.create_exclusive(f"{s3}/k", b"1") is True
    assert storage.create_exclusive(f"{s3}/k", b"2") is False
    assert storage.read_bytes(f"{s3}/k") == b"1"


def test_s3_without_credentials_or_endpoint_is_a_storage_error(monkeypatch):
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(storage.StorageError, match=r"read s3://bucket/x: S3: no AWS credentials found"):
        storage.read_bytes("s3://bucket/x")
    with pytest.raises(storage.StorageError, match=r"s3://bucket/cifar.*: S3: no AWS credentials found"):
        SOURCES["cifar10"](dcfg("data.source=cifar10", "data.root=s3://bucket/cifar"), "train")
    s3fs.S3FileSystem.clear_instance_cache()


def test_unreachable_tracking_server_with_password_is_one_redacted_line(tmp_path, monkeypatch, capsys):
    from ltaug.cli import job_main

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    rc = job_main("x", "d", lambda *a: {}, ["--set", "tracking.uri=http://alice:hunter2-Pa55@127.0.0.1:9",
                                            "--set", f"run.output_dir={tmp_path}"])
    out = capsys.readouterr()
    assert rc == 2 and "hunter2" not in out.out + out.err and out.err.count("\n") == 1
    assert "tracking.uri=http://alice:***@127.0.0.1:9" in out.err
    assert all("hunter2" not in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
