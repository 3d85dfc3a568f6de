"""Tables as users' spreadsheets write them: `;` separators, Latin-1, a byte-order mark."""

import pytest

from pipelines.data import read_table
from pipelines.errors import PipelineError


def test_a_semicolon_csv_in_latin1_is_read_with_its_columns(tmp_path, capsys):
    path = tmp_path / "export.csv"
    path.write_bytes("name;size;label\ncafé crème;1.5;yes\nthé;2.5;no\n".encode("latin-1"))
    frame = read_table(path)
    assert list(frame.columns) == ["name", "size", "label"]
    assert frame["name"].tolist() == ["café crème", "thé"] and frame["size"].tolist() == [1.5, 2.5]
    assert "is not UTF-8: read as Latin-1" in capsys.readouterr().err


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhello,1\n")
    assert list(read_table(path).columns) == ["text", "label"]


def test_a_comma_in_a_quoted_value_keeps_the_comma_separator(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text('text,label\n"good; really, good",yes\n"bad; awful",no\n')
    assert read_table(path)["text"].tolist() == ["good; really, good", "bad; awful"]


def test_errors_name_the_option(tmp_path):
    with pytest.raises(PipelineError, match="--valid-data .*absent.csv: no such file"):
        read_table(tmp_path / "absent.csv", "--valid-data")
    (tmp_path / "binary.parquet").write_bytes(b"not parquet")
    with pytest.raises(PipelineError, match="--sample .*binary.parquet: could not read it as a table"):
        read_table(tmp_path / "binary.parquet", "--sample")


def test_predict_reads_csv_cells_as_pandas_read_the_training_data(tmp_path):
    """`pipelines predict tabular --csv`: a bool column written by pandas is `True`/`False`, a missing value
    may be `NA`; as strings they would be unseen categories (code 0) instead of fastai's classes."""
    from pipelines.predict import csv_records

    path = tmp_path / "rows.csv"
    path.write_text("active,size,island,note\nFalse,3,Dream,NA\nTRUE,2.5,,x\n")
    columns, records = csv_records(path)
    assert columns == ["active", "size", "island", "note"]
    assert records == [{"active": False, "size": 3, "island": "Dream", "note": None},
                       {"active": True, "size": 2.5, "island": None, "note": "x"}]


def test_a_text_file_that_is_not_utf8_is_read_as_latin1(tmp_path, capsys):
    from pipelines.predict import read_texts

    path = tmp_path / "texts.txt"
    path.write_bytes("très bon café\n\nnul\n".encode("latin-1"))
    assert read_texts((), path) == ["très bon café", "nul"]
    assert "--file" in capsys.readouterr().err


def test_the_unseen_class_check_leaves_a_split_without_validation_rows_to_fastai():
    import numpy as np
    import pandas as pd

    from pipelines.tasks.tabular import classes_seen_in_training

    labels = pd.Series(["a", "b", "c", "c"])
    assert classes_seen_in_training(labels, np.array([False, False, False, False])).tolist() == [True] * 4
    assert classes_seen_in_training(labels, np.array([False, True, False, True])).tolist() == [True, False, True, True]
    with pytest.raises(PipelineError, match="no validation row has a class"):
        classes_seen_in_training(labels, np.array([False, True, False, False]))
