"""The pure core receives only ranking and index settings, and the bounds of the state it keeps (issue 12)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from stream_reco.core.recommender import Recommender
from stream_reco.settings import CORE_FIELDS, CoreSettings, Settings, core_settings

CORE_DIR = Path(__file__).resolve().parents[2] / "stream_reco" / "core"


def test_the_recommender_holds_no_connection_security_or_tool_setting() -> None:
    settings = Settings(sasl_password="hunter2", bootstrap="kafka:9093", list_size=7, broker_heap="2g")
    rec = Recommender(settings)
    assert isinstance(rec.settings, CoreSettings)
    assert isinstance(rec.catalog.settings, CoreSettings)
    for name in ("sasl_password", "bootstrap", "broker_heap", "app_id", "data_dir", "eval_sample_visitors"):
        assert not hasattr(rec.settings, name), name
    assert "hunter2" not in repr(rec.settings)
    assert rec.settings.list_size == 7


def test_core_fields_are_the_ranking_and_index_sections_and_the_marked_state_bounds() -> None:
    sections = {f.name: f.metadata["section"] for f in dataclasses.fields(Settings)}
    outside = {name for name in CORE_FIELDS if sections[name] not in ("ranking", "index")}
    assert outside == {"max_state_bytes", "history_cap", "owned_cap", "stats_max_items",
                       "popularity_max_categories", "sknn_max_sessions", "dedup_window"}
    assert {name for name, section in sections.items() if section in ("ranking", "index")} <= set(CORE_FIELDS)


def test_core_settings_keep_values_and_defaults() -> None:
    settings = Settings(mmr_lambda=0.3, owned_cap=9)
    core = core_settings(settings)
    assert (core.mmr_lambda, core.owned_cap) == (0.3, 9)
    assert core_settings(core) is core
    assert CoreSettings().embedding_dim == Settings().embedding_dim
    assert core.replace(list_size=4).list_size == 4


def test_core_code_reads_only_core_fields() -> None:
    """A core module reading e.g. `settings.partitions` would fail at run time on `CoreSettings`; find it here
    first, by reading every `settings.<name>` in stream_reco/core/."""
    read = set()
    for path in CORE_DIR.glob("*.py"):
        read |= set(re.findall(r"settings\.([a-z_]+)\b(?!\()", path.read_text()))
    methods = {"replace"}
    assert read - methods <= set(CORE_FIELDS), sorted(read - methods - set(CORE_FIELDS))
    assert read  # the pattern still finds the reads
