"""read_records / iter_records: file types, directories, globs and file-level errors."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest

from hbat.orchestrator.data import DataError, expand_paths, iter_records, read_records


def test_jsonl_line_numbers_skip_blank_lines(tmp_path, h):
    p = h.write_jsonl(tmp_path / "a.jsonl", [{"x": 1}, "", "   ", {"x": 2}])
    assert list(read_records(p)) == [(1, {"x": 1}), (4, {"x": 2})]


def test_jsonl_bom_and_other_suffixes(tmp_path):
    p = tmp_path / "a.json-lines"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": "b"}).encode() + b"\n")
    assert list(read_records(p)) == [(1, {"a": "b"})]
    q = tmp_path / "b.ndjson"
    q.write_text('{"k": 1}\n')
    assert list(read_records(str(q))) == [(1, {"k": 1})]


def test_gzip_jsonl(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write('{"k": 1}\n{"k": 2}\n')
    assert [r["k"] for _, r in read_records(p)] == [1, 2]


def test_json_array_and_json_lines(tmp_path):
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"k": 1}, {"k": 2}]))
    items = list(iter_records(arr))
    assert [(i.unit, i.number, i.record["k"]) for i in items] == [("record", 1, 1), ("record", 2, 2)]
    lines = tmp_path / "lines.json"  # what datasets' Dataset.to_json writes
    lines.write_text('{"k": 1}\n{"k": 2}\n')
    assert [i.unit for i in iter_records(lines)] == ["line", "line"]


def test_json_array_non_object(tmp_path, h):
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"k": 1}, 5]))
    with pytest.raises(DataError) as ei:
        list(iter_records(arr))
    h.assert_located(ei.value, arr, 2, None, unit="record")


def test_parquet_rows_and_nested_messages(tmp_path, h):
    recs = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    ]
    p = h.write_parquet(tmp_path / "a.parquet", recs)
    items = list(iter_records(p))
    assert [(i.unit, i.number) for i in items] == [("row", 1), ("row", 2)]
    assert items[0].record == recs[0]


def test_directory_and_glob_sorted(tmp_path, h):
    d = tmp_path / "shards"
    d.mkdir()
    h.write_jsonl(d / "b.jsonl", [{"k": 2}])
    h.write_jsonl(d / "a.jsonl", [{"k": 1}])
    h.write_parquet(d / "c.parquet", [{"k": 3}])
    (d / "README.md").write_text("not data")
    (d / "sub").mkdir()
    h.write_jsonl(d / "sub" / "z.jsonl", [{"k": 99}])  # not recursive
    assert [r["k"] for _, r in read_records(d)] == [1, 2, 3]
    assert [r["k"] for _, r in read_records(d / "*.jsonl")] == [1, 2]
    assert [p.rsplit("/", 1)[1] for p in expand_paths(d)] == ["a.jsonl", "b.jsonl", "c.parquet"]
    # the file of each record is known, for error messages
    assert [i.path.rsplit("/", 1)[1] for i in iter_records(d)] == ["a.jsonl", "b.jsonl", "c.parquet"]


def test_invalid_json_names_file_and_line(tmp_path, h):
    p = h.write_jsonl(tmp_path / "train.jsonl", [{"ok": 1}, {"ok": 2}, '{"prompt": "x",'])
    with pytest.raises(DataError) as ei:
        list(read_records(p))
    h.assert_located(ei.value, p, 3, None)
    assert "invalid JSON" in str(ei.value)


def test_non_object_line(tmp_path, h):
    p = h.write_jsonl(tmp_path / "train.jsonl", [{"ok": 1}, [1, 2]])
    with pytest.raises(DataError) as ei:
        list(read_records(p))
    h.assert_located(ei.value, p, 2, None)
    assert "expected a JSON object, got list" in str(ei.value)


def test_invalid_utf8(tmp_path, h):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError) as ei:
        list(read_records(p))
    h.assert_located(ei.value, p, 2, None)


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl"])
def test_empty_file(tmp_path, name):
    p = tmp_path / name
    p.write_text("" if name == "empty.jsonl" else "\n  \n")
    with pytest.raises(DataError, match="no records") as ei:
        list(read_records(p))
    assert name in str(ei.value)


def test_empty_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), p)
    with pytest.raises(DataError, match="empty.parquet: no records"):
        list(read_records(p))


def test_corrupt_parquet(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet: cannot read Parquet"):
        list(read_records(p))


def test_missing_unsupported_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))
    csv = tmp_path / "a.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        list(read_records(csv))
    with pytest.raises(DataError, match="matches no data files"):
        list(read_records(tmp_path / "*.parquet"))
    empty_dir = tmp_path / "d"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="no data files"):
        list(read_records(empty_dir))


def test_data_error_format_and_pickle():
    e = DataError("expected a non-empty string, got int", path="data/train.jsonl", line=17, field="chosen")
    assert str(e) == "data/train.jsonl, line 17, field 'chosen': expected a non-empty string, got int"
    assert isinstance(e, ValueError)
    r = DataError("bad", path="x.parquet", line=3, field="label", unit="row")
    assert str(r) == "x.parquet, row 3, field 'label': bad"
    back = pickle.loads(pickle.dumps(r))
    assert (back.path, back.line, back.field, back.unit, str(back)) == (
        "x.parquet",
        3,
        "label",
        "row",
        str(r),
    )
    assert str(DataError("no records", path="a.jsonl")) == "a.jsonl: no records"
