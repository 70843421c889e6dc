"""Tests for easycls.data.tables: label files that pandas cannot read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from easycls.data.tables import LabelTable, TableError, read_id_csv, read_label_csv

COURSE = (
    "ImageID,Labels,Caption\n"
    '0.jpg,1,A man, riding a "bike" down the road\n'
    "1.jpg,1 19 3,Two people, a dog, and a frisbee\n"
    '2.jpg,19,"big" dog, running\n'
    '3.jpg,2,"A properly, quoted caption"\n'
    "4.jpg,5,plain caption\n"
    "\n\n"
)


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    # newline="" so the test controls the line endings byte for byte
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return path


def test_course_shape_with_commas_and_quotes(tmp_path):
    table = read_label_csv(write(tmp_path, "train.csv", COURSE))
    assert isinstance(table, LabelTable)
    assert table.files == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert table.labels == [["1"], ["1", "19", "3"], ["19"], ["2"], ["5"]]
    assert table.rows == [2, 3, 4, 5, 6]
    assert (table.file_column, table.label_column) == ("ImageID", "Labels")
    assert table.extra["Caption"] == [
        'A man, riding a "bike" down the road',
        "Two people, a dog, and a frisbee",
        '"big" dog, running',
        "A properly, quoted caption",
        "plain caption",
    ]
    assert len(table) == 5


def test_pandas_really_fails_on_the_course_shape(tmp_path):
    pd = pytest.importorskip("pandas")
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(write(tmp_path, "train.csv", COURSE))


def test_stray_quote_lines_use_plain_split_and_good_lines_use_csv(tmp_path):
    text = (
        "ImageID,Labels,Caption\n"
        '"a,b.jpg","1 2","x ""quoted"" word"\n'  # well-formed CSV: quotes and escapes honoured
        '5.jpg,3,"unclosed quote, and more\n'  # broken quoting: plain split, quote kept
        '6.jpg,4,say "hi", then go\n'
    )
    table = read_label_csv(write(tmp_path, "train.csv", text))
    assert table.files == ["a,b.jpg", "5.jpg", "6.jpg"]
    assert table.labels == [["1", "2"], ["3"], ["4"]]
    assert table.extra["Caption"] == [
        'x "quoted" word',
        '"unclosed quote, and more',
        'say "hi", then go',
    ]


def test_labels_stay_strings_and_double_spaces_collapse(tmp_path):
    text = "ImageID,Labels\n1.jpg,  01   19 \n2.jpg,19 19 7\n"
    table = read_label_csv(write(tmp_path, "train.csv", text))
    assert table.labels == [["01", "19"], ["19", "7"]]


def test_single_label_filename_label(tmp_path):
    text = "filename,label\ncat1.jpg,cat\ndog1.jpg,dog\n"
    table = read_label_csv(write(tmp_path, "labels.csv", text))
    assert table.files == ["cat1.jpg", "dog1.jpg"]
    assert table.labels == [["cat"], ["dog"]]
    assert table.extra == {}


@pytest.mark.parametrize("delimiter", ["|", ";"])
def test_other_label_delimiters(tmp_path, delimiter):
    text = f"id,tags\n1.png,sky{delimiter} sea{delimiter}{delimiter}sand\n"
    table = read_label_csv(write(tmp_path, "t.csv", text), label_delimiter=delimiter)
    assert table.labels == [["sky", "sea", "sand"]]


def test_no_delimiter_keeps_class_names_with_spaces(tmp_path):
    text = "image,class\n1.png,golden retriever\n"
    table = read_label_csv(write(tmp_path, "t.csv", text), label_delimiter=None)
    assert table.labels == [["golden retriever"]]


def test_tsv_by_extension_and_by_sniffing(tmp_path):
    text = "ImageID\tLabels\tCaption\n1.jpg\t3 4\ta, b, c\n2.jpg\t5\tx\n"
    for name in ("train.tsv", "train.txt"):
        table = read_label_csv(write(tmp_path, name, text))
        assert table.labels == [["3", "4"], ["5"]]
        assert table.extra["Caption"] == ["a, b, c", "x"]


def test_bom_and_crlf(tmp_path):
    text = "ImageID,Labels,Caption\r\n1.jpg,2,a, b\r\n2.jpg,3,c\r\n\r\n"
    path = write(tmp_path, "train.csv", text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    table = read_label_csv(path)
    assert table.file_column == "ImageID"
    assert table.files == ["1.jpg", "2.jpg"]
    assert table.extra["Caption"] == ["a, b", "c"]


def test_column_detection_and_explicit_columns(tmp_path):
    text = ",Category,File,Notes\n0,b,x.png,n\n1,a,y.png,m\n"
    path = write(tmp_path, "t.csv", text)
    table = read_label_csv(path)
    assert (table.file_column, table.label_column) == ("File", "Category")
    assert table.files == ["x.png", "y.png"]
    assert set(table.extra) == {"column0", "Notes"}
    table = read_label_csv(path, file_column="file", label_column="Notes")
    assert table.labels == [["n"], ["m"]]


def test_fallback_to_first_and_second_columns(tmp_path):
    table = read_label_csv(write(tmp_path, "t.csv", "pic,kind\n1.png,a\n"))
    assert (table.file_column, table.label_column) == ("pic", "kind")


def test_malformed_rows_are_listed_with_line_numbers(tmp_path):
    text = "ImageID,Labels,Caption\n1.jpg,1,ok\n2.jpg\n3.jpg,2,ok\n,3,no id\n5.jpg,4,ok\n6.jpg\n"
    with pytest.raises(TableError) as err:
        read_label_csv(write(tmp_path, "train.csv", text))
    msg = str(err.value)
    assert "3 malformed rows in" in msg and "train.csv: lines 3, 5, 7" in msg
    assert "ImageID,Labels" in msg
    assert err.value.lines == [3, 5, 7]


def test_many_malformed_rows_list_the_first_ten_and_the_count(tmp_path):
    text = "ImageID,Labels\n" + "".join(f"{i}.jpg\n" for i in range(25))
    with pytest.raises(TableError) as err:
        read_label_csv(write(tmp_path, "train.csv", text))
    msg = str(err.value)
    assert "25 malformed rows" in msg
    assert "lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ..." in msg and "(25 in all)" in msg
    assert len(err.value.lines) == 25


def test_empty_labels_name_line_and_image(tmp_path):
    text = "ImageID,Labels,Caption\n1.jpg,1,a\n2.jpg,,b\n3.jpg,2,c\n123.jpg,  ,d\n"
    path = write(tmp_path, "train.csv", text)
    with pytest.raises(TableError) as err:
        read_label_csv(path)
    msg = str(err.value)
    assert "line 3: empty Labels for image 2.jpg" in msg
    assert "line 5: empty Labels for image 123.jpg" in msg
    assert "remove those rows from the CSV" in msg and "require_labels" not in msg
    table = read_label_csv(path, require_labels=False)
    assert table.labels == [["1"], [], ["2"], []]


def test_duplicate_ids(tmp_path):
    text = "ImageID,Labels\n1.jpg,1\n2.jpg,2\n1.jpg,3\n2.jpg,4\n3.jpg,5\n"
    with pytest.raises(TableError) as err:
        read_label_csv(write(tmp_path, "train.csv", text))
    msg = str(err.value)
    assert "2 duplicate ids" in msg
    assert "1.jpg (lines 2, 4)" in msg and "2.jpg (lines 3, 5)" in msg


def test_all_row_problems_reported_together(tmp_path):
    text = "ImageID,Labels\n1.jpg,\n2.jpg\n3.jpg,1\n3.jpg,2\n"
    with pytest.raises(TableError) as err:
        read_label_csv(write(tmp_path, "train.csv", text))
    msg = str(err.value)
    assert "1 malformed row" in msg and "empty Labels" in msg and "duplicate id" in msg
    assert err.value.lines == [2, 3, 4, 5]


def test_free_text_before_a_needed_column_is_an_error(tmp_path):
    text = "Caption,ImageID,Labels\nfine,1.jpg,1\nA man, riding,2.jpg,2\n"
    with pytest.raises(TableError) as err:
        read_label_csv(write(tmp_path, "train.csv", text))
    msg = str(err.value)
    assert re.search(r"1 row in .*train\.csv with more fields than the header", msg)
    assert "line 3" in msg
    # properly quoted, the same file reads fine
    quoted = 'Caption,ImageID,Labels\nfine,1.jpg,1\n"A man, riding",2.jpg,2\n'
    assert read_label_csv(write(tmp_path, "q.csv", quoted)).files == ["1.jpg", "2.jpg"]


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("ImageID\n1.jpg\n", {}, "found no label column"),
        ("ImageID,Caption\n1.jpg,a dog\n", {}, "found no label column"),
        ("ImageID,Labels\n1.jpg,1\n", {"label_column": "Tags"}, "no column 'Tags'"),
        ("ImageID,Labels\n1.jpg,1\n", {"file_column": "Path"}, "pass file_column="),
        ("ImageID,Labels\n1.jpg,1\n", {"file_column": "Labels", "label_column": "labels"}, "both"),
        ("1.jpg,3\n2.jpg,4\n", {}, "looks like data, not a header"),
        ("", {}, "is empty"),
        ("ImageID,Labels\n\n", {}, "no data rows"),
    ],
)
def test_header_problems(tmp_path, text, kwargs, expected):
    with pytest.raises(TableError, match=expected) as err:
        read_label_csv(write(tmp_path, "train.csv", text), **kwargs)
    assert "train.csv" in str(err.value)


def test_header_error_lists_the_header(tmp_path):
    with pytest.raises(TableError) as err:
        read_label_csv(write(tmp_path, "t.csv", "a,b\n1,2\n"), label_column="Labels")
    assert "['a', 'b']" in str(err.value) and "label_column=" in str(err.value)


def test_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("ImageID,Labels\n1.jpg,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(TableError, match="not UTF-8.*line 2"):
        read_label_csv(path)


def test_read_id_csv_with_commas_in_captions(tmp_path):
    text = (
        "ImageID,Caption\r\n"
        "30000.jpg,A cat, on a mat\r\n"
        '30001.jpg,"quoted, caption"\r\n'
        '30002.jpg,a "big" dog, running\r\n'
        "30003.jpg\r\n"
    )
    ids, rows = read_id_csv(write(tmp_path, "test.csv", text))
    assert ids == ["30000.jpg", "30001.jpg", "30002.jpg", "30003.jpg"]
    assert rows == [2, 3, 4, 5]


def test_read_id_csv_reports_duplicates_and_empty_ids(tmp_path):
    text = "ImageID,Caption\n1.jpg,a\n,b\n1.jpg,c\n"
    with pytest.raises(TableError) as err:
        read_id_csv(write(tmp_path, "test.csv", text))
    msg = str(err.value)
    assert "1 malformed row" in msg and "line 3" in msg
    assert "1.jpg (lines 2, 4)" in msg
