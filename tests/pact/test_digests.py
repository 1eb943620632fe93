"""pact.digests: the bytes each stored key is made of (a change would re-key every run, cache and stage)."""
from __future__ import annotations

import hashlib
import random
import string
from pathlib import Path

from pact.digests import files_digest, json_digest


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def test_json_digest_forms():
    value = {"b": [1, 2.5, None], "a": "é", "p": Path("x/y")}
    assert json_digest(value) == sha('{"a":"\\u00e9","b":[1,2.5,null],"p":"x/y"}')
    assert json_digest(value, compact=False) == sha('{"a": "\\u00e9", "b": [1, 2.5, null], "p": "x/y"}')
    assert json_digest(value, ensure_ascii=False) == sha('{"a":"é","b":[1,2.5,null],"p":"x/y"}')
    assert json_digest(value, sort_keys=False) == sha('{"b":[1,2.5,null],"a":"\\u00e9","p":"x/y"}')


def test_json_digest_refuses_unwritable_values_when_asked():
    import pytest

    with pytest.raises(TypeError):
        json_digest({"p": Path("x")}, default=None)


def test_files_digest_is_names_and_bytes_in_order(tmp_path):
    rng = random.Random()
    files = []
    for i in range(3):
        f = tmp_path / "d" / f"{rng.choice(string.ascii_lowercase)}{i}.bin"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(rng.randbytes(rng.randint(0, 5 << 20)))  # some over the 4 MiB read chunk
        files.append(f)
    expected = b"".join(str(f.relative_to(tmp_path)).encode() + b"\0" + f.read_bytes() for f in files)
    assert files_digest(tmp_path, files) == sha(expected)
    assert files_digest(tmp_path, files[::-1]) != files_digest(tmp_path, files)
