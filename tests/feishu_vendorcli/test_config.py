"""The plugin's admin config: floors that keep every loop from running hot, in the schema and in code."""

from __future__ import annotations

import json

import jsonschema
import pytest
from feishu_vendorcli.config import FeishuConfig

from tests.support import REPO


def test_configured_intervals_have_a_floor_in_the_schema_and_in_code() -> None:
    schema = json.loads((REPO / "plugins" / "feishu_vendorcli" / "plugin.json").read_text())["configSchema"]
    for name, floor in (("minPollIntervalSeconds", 0.1), ("reconnectInitialSeconds", 0.05)):
        assert schema["properties"][name]["minimum"] == floor
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({name: 0}, schema)
    config = FeishuConfig.load({"minPollIntervalSeconds": 0, "reconnectInitialSeconds": 0})
    assert (config.min_poll_interval_seconds, config.reconnect_initial_seconds) == (0.1, 0.05)
