"""digits/serve/contract.py: the request body its client helper builds is what the served model reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digits.serve import contract, guard

pytestmark = pytest.mark.unit


def test_request_body_in_both_layouts_with_and_without_params():
    arrays = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    split = contract.request_body(arrays)
    assert split == {"dataframe_split": {"columns": ["image"], "data": [[arrays[0].tolist()], [arrays[1].tolist()]]}}
    assert contract.request_body(["abc"], {"mode": "number"}, layout="inputs") == {
        "inputs": ["abc"],
        "params": {"mode": "number"},
    }
    assert "params" not in contract.request_body(["abc"], {})
    # What the guard makes of {"inputs": ...} is the dataframe_split the helper writes: one body, one meaning.
    assert guard.parse_request(json.dumps(contract.request_body(arrays, layout="inputs"))) == split


def test_request_body_refuses_what_the_server_would():
    with pytest.raises(ValueError, match="takes the params mode, min_confidence, length, pattern, not colour"):
        contract.request_body(["abc"], {"colour": "red"})
    with pytest.raises(ValueError, match="layout must be one of dataframe_split, inputs"):
        contract.request_body(["abc"], layout="records")


def test_messages_carry_the_limits():
    assert contract.batch_too_large(1001) == "batch of 1,001 images is over the limit of 1,000 per request: split it"
    assert f"over the limit of {contract.MAX_REQUEST_BYTES:,}" in contract.body_too_large(
        contract.MAX_REQUEST_BYTES + 1
    )
    assert "dataframe_split, dataframe_records, instances or inputs" in contract.accepted_content()
