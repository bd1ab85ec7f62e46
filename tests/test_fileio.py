"""Files others must read: what the atomic writer and staging folders leave behind, and what manifests mask."""

import os
import stat

import pytest

from bactrian.fileio import atomic_write_bytes, staging_folder
from bactrian.manifest import public_config


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_and_folders_get_the_permissions_the_umask_gives(tmp_path, monkeypatch, umask):
    """They were 0600 and 0700 (mkstemp, mkdtemp): a vLLM server, a teammate or a shared dataset folder could not
    read an adapter, a dataset or a manifest."""
    import bactrian.fileio

    monkeypatch.setattr(bactrian.fileio, "UMASK", umask)
    atomic_write_bytes(tmp_path / "file.json", b"{}")
    assert mode(tmp_path / "file.json") == 0o666 & ~umask
    assert mode(staging_folder(tmp_path / "export")) == 0o777 & ~umask


def test_the_umask_is_read_as_the_process_has_it(tmp_path):
    import bactrian.fileio

    previous = os.umask(0o027)
    os.umask(previous)
    assert bactrian.fileio.UMASK == previous
    atomic_write_bytes(tmp_path / "plain", b"x")
    with open(tmp_path / "by-open", "wb"):
        pass
    assert mode(tmp_path / "plain") == mode(tmp_path / "by-open")


def test_manifests_mask_credentials_inside_urls_too():
    config = {"base_url": "https://alice:s3cret@api.example.com/v1?api-key=abc&region=eu",
              "endpoints": ["http://bob:pw@host:8000/v1", "http://plain:8000/v1?x=1"],
              "translate_url": "https://translate.example.com/v2?key=K&format=text", "api_key": "sk-1", "lang": "de"}
    masked = public_config(config)
    text = str(masked)
    assert all(secret not in text for secret in ("alice", "s3cret", "abc", "bob", ":pw@", "key=K", "sk-1"))
    assert masked["base_url"] == "https://***@api.example.com/v1?api-key=***&region=eu"
    assert masked["endpoints"][1] == "http://plain:8000/v1?x=1" and masked["lang"] == "de"
    assert masked["translate_url"] == "https://translate.example.com/v2?key=***&format=text"


HOLD = """
import sys, time
from bactrian.fileio import output_lock
with output_lock(sys.argv[1], "finetune"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_job_on_an_output_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path):
    """Two finetunes into one folder removed each other's checkpoint staging; two `data generate` runs each
    paid for every request."""
    import subprocess
    import sys

    from bactrian.data.generate import DataGenerateConfig, generate
    from bactrian.errors import ConfigError
    from bactrian.fileio import output_lock

    from support import write_jsonl

    out = tmp_path / "generated"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        source = write_jsonl(tmp_path / "en.jsonl", [{"instruction": "Name a colour.", "input": ""}])
        config = DataGenerateConfig(input=str(source), output_dir=str(out), base_url="http://127.0.0.1:9/v1",
                                    model="teacher")
        with pytest.raises(ConfigError, match=rf"generated is in use by bactrian finetune \(pid {holder.pid} on "):
            generate(config)  # refused before its first request: nothing listens at that endpoint
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out, "data generate"):  # the killed holder's lock is taken over
        with pytest.raises(ConfigError, match="in use by bactrian data generate"):
            with output_lock(out, "data generate"):
                pass


def test_a_full_disk_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    import errno

    from bactrian.fileio import DiskFull

    target = tmp_path / "report.json"
    atomic_write_bytes(target, b"old")

    def full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    from bactrian.fileio import atomic_write_with

    with pytest.raises(DiskFull, match="report.json: no space left on the device"):
        atomic_write_with(target, full)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device", "/data/checkpoint-3/optimizer.pt"),
                                   __import__("sqlite3").OperationalError("database or disk is full")])
def test_the_command_says_the_disk_is_full_in_one_line(monkeypatch, capsys, error):
    """torch.save, save_pretrained and SQLite raise their own errors on a full disk: one line, not a traceback."""
    import bactrian.cli

    def fail(command, args):
        raise error

    monkeypatch.setattr(bactrian.cli, "run", fail)  # every verb runs through it
    assert bactrian.cli.main(["languages"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("bactrian languages: error: no space left on the device") and "Traceback" not in message


def test_a_full_disk_under_the_request_cache_names_it(tmp_path):
    """sqlite3.OperationalError: database or disk is full, raw, from deep inside a job."""
    from bactrian.endpoints.cache import RequestCache
    from bactrian.fileio import DiskFull

    cache = RequestCache(tmp_path / "requests.sqlite")
    cache.put("kept", {"answer": 1})
    cache.connection.execute("PRAGMA max_page_count = 1")  # this database can grow no more: as on a full disk
    with pytest.raises(DiskFull, match="requests.sqlite: no space left on the device"):
        cache.put("big", {"answer": "x" * 100_000})
    assert cache.get("kept") == {"answer": 1}


def test_a_library_write_failing_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch.save and safetensors raise RuntimeError / SafetensorError, not OSError, when the disk fills up."""
    import shutil
    from collections import namedtuple

    from bactrian.fileio import DiskFull, disk_full_named

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 100, 0))
    with pytest.raises(DiskFull, match="checkpoint-3: no space left"):
        with disk_full_named(tmp_path / "checkpoint-3"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 0, 1 << 40))
    with pytest.raises(RuntimeError, match="PytorchStreamWriter"):  # with room left, the error is the library's
        with disk_full_named(tmp_path / "checkpoint-3"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
