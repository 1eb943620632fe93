"""pact.atomic_files: a file is replaced whole or not at all, with ordinary permissions."""
import json
import os
import stat

import pytest

from pact.atomic_files import write_json_atomic, write_jsonl_atomic, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_file_gets_the_umask_permissions_not_mkstemps(tmp_path, umask):
    old = os.umask(umask)
    try:
        p = write_text_atomic(tmp_path / "sub" / "a.txt", "héllo\n")
    finally:
        os.umask(old)
    assert p == tmp_path / "sub" / "a.txt"
    assert p.read_bytes() == "héllo\n".encode("utf-8")
    assert _mode(p) == 0o666 & ~umask


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "state.json"
    write_json_atomic(p, {"step": 1})
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(p, "half \ud800 written")  # a lone surrogate cannot be encoded: fails mid-write
    assert json.loads(p.read_text()) == {"step": 1}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["state.json"]


def test_json_and_jsonl_formats(tmp_path):
    p = write_json_atomic(tmp_path / "m.json", {"name": "naïve", "x": float("nan")})
    text = p.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "naïve" in text and "NaN" in text
    q = write_jsonl_atomic(tmp_path / "r.jsonl", ({"i": i} for i in range(3)))
    assert q.read_text() == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'
    write_jsonl_atomic(q, [])
    assert q.read_text() == ""
