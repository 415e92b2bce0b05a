from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from pathlib import Path

import pytest

from stream_reco.settings import (
    ENV_PREFIX,
    INTERNAL_FIELDS,
    INTERNALS_ENV,
    SECTIONS,
    Settings,
    SettingsError,
    render_effective,
    render_markdown,
)

ROOT = Path(__file__).resolve().parents[2]


def test_contract_defaults() -> None:
    s = Settings.load(env={})
    assert s.bootstrap == "127.0.0.1:9092"
    assert s.events_topic == "shop.events"
    assert s.catalog_topic == "shop.catalog"
    assert s.recommendations_topic == "reco.recommendations"
    assert s.dead_letter_topic == "reco.dead-letter"
    assert s.app_id == "stream-reco"
    assert s.model == "latest"
    assert s.list_size == 10
    assert s.data_dir.endswith("stream-reco")


def _sample_value(f: dataclasses.Field) -> tuple[str, object]:
    """A non-default value for the field, as env text and as the expected typed value."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if f.type == "bool":
        return ("false" if default else "true"), (not default)
    if f.type == "int":
        return "7", 7
    if f.type == "float":
        return "0.25", 0.25
    if f.name == "security_protocol":
        return "SASL_PLAINTEXT", "SASL_PLAINTEXT"
    if f.name == "sasl_mechanism":
        return "SCRAM-SHA-256", "SCRAM-SHA-256"
    return "x-value", "x-value"


SETTINGS_FIELDS = [f for f in dataclasses.fields(Settings) if f.name not in INTERNAL_FIELDS]
INTERNAL = [f for f in dataclasses.fields(Settings) if f.name in INTERNAL_FIELDS]
SECTION_OF = {f.name: f.metadata["section"] for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize("f", SETTINGS_FIELDS, ids=lambda f: f.name)
def test_every_field_binds_to_its_env_variable(f: dataclasses.Field) -> None:
    text, expected = _sample_value(f)
    if f.name == "mmr_lambda":
        text, expected = "0.25", 0.25
    s = Settings(**{f.name: expected})
    try:
        s.validate()
    except SettingsError:
        pytest.skip(f"sample value not valid for {f.name}")
    loaded = Settings.load(env={ENV_PREFIX + f.name.upper(): text})
    assert getattr(loaded, f.name) == expected


def test_precedence_toml_then_env_then_override(tmp_path: Path) -> None:
    cfg = tmp_path / "reco.toml"
    cfg.write_text('events_topic = "from-toml"\nlist_size = 5\nmmr_lambda = 0.5\n')
    s = Settings.load(cfg, env={})
    assert (s.events_topic, s.list_size, s.mmr_lambda) == ("from-toml", 5, 0.5)
    s = Settings.load(cfg, env={"STREAM_RECO_LIST_SIZE": "8"})
    assert s.list_size == 8 and s.events_topic == "from-toml"
    s = Settings.load(cfg, env={"STREAM_RECO_LIST_SIZE": "8"}, list_size=3)
    assert s.list_size == 3
    s = Settings.load(env={"STREAM_RECO_CONFIG": str(cfg)})
    assert s.events_topic == "from-toml"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAM_RECO_LIST_SIZE": "ten"}, "list_size"),
        ({"STREAM_RECO_LIST_SIZE": "0"}, "list_size"),
        ({"STREAM_RECO_MMR_LAMBDA": "1.5"}, "mmr_lambda"),
        ({"STREAM_RECO_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"STREAM_RECO_SCOPE_TO_PAGE_CATEGORY": "maybe"}, "scope_to_page_category"),
        ({"STREAM_RECO_MAX_STATE_BYTES": "2000000"}, "max_state_bytes"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env=env)


def test_unknown_key_in_toml_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "reco.toml"
    cfg.write_text('evnts_topic = "typo"\n')
    with pytest.raises(SettingsError, match="evnts_topic"):
        Settings.load(cfg, env={})


def test_secrets_never_in_repr_or_masked() -> None:
    s = Settings.load(env={
        "STREAM_RECO_SASL_PASSWORD": "hunter2", "STREAM_RECO_SASL_USERNAME": "shop",
        "STREAM_RECO_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAM_RECO_SASL_MECHANISM": "PLAIN",
    })
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.masked())
    assert s.masked()["sasl_username"] == "shop"
    assert s.kafka_client_kwargs()["sasl_plain_password"] == "hunter2"


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [env for _, env, _, _ in Settings.field_docs() if f"`{env}`" not in readme]
    assert not missing, f"settings missing from the README's configuration table: {missing}"
    leaked = [f.name for f in INTERNAL if f"`{ENV_PREFIX}{f.name.upper()}`" in readme]
    assert not leaked, f"internal fields documented as settings in the README: {leaked}"


def test_readme_tables_are_current() -> None:
    """The README's tables are `stream-reco config --format markdown`: one table per section."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- settings-table:start -->\n", 1)[1].split("<!-- settings-table:end -->", 1)[0]
    assert block == render_markdown() + "\n", "regenerate the README's tables: stream-reco config --format markdown"


def _example_keys(text: str) -> list[tuple[str, str | None]]:
    """(key, section) of every key in an example file, set or commented out: a section header, commented out
    or not, opens the section of the keys after it."""
    keys: list[tuple[str, str | None]] = []
    section = None
    for line in text.splitlines():
        header = re.match(r"^(?:#\s*)?\[(\w+)\]", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^(?:#\s*)?(\w+)\s*=\s*\S", line)
        if key:
            keys.append((key.group(1), section))
    return keys


def test_example_config_covers_every_setting_once_in_its_section() -> None:
    text = (ROOT / "config.example.toml").read_text()
    tomllib.loads(text)  # parses
    keys = _example_keys(text)
    names = [k for k, _ in keys]
    assert sorted(names) == sorted(f.name for f in SETTINGS_FIELDS), "every setting exactly once, no internals"
    wrong = [(k, s, SECTION_OF[k]) for k, s in keys if s != SECTION_OF[k]]
    assert not wrong, f"keys outside their section (key, in, belongs): {wrong}"


def test_example_config_shows_the_common_settings_first() -> None:
    text = (ROOT / "config.example.toml").read_text()
    data = tomllib.loads(text)
    set_keys = {k for section in data.values() for k in section}
    common = {f.name for f in SETTINGS_FIELDS if f.metadata["common"]}
    # secrets and the machine-dependent data_dir are shown, commented out, among them
    assert set_keys == common - {"sasl_password", "ssl_password", "data_dir"}
    names = [k for k, _ in _example_keys(text)]
    assert set(names[: len(common)]) == common
    assert {"bootstrap", "app_id", "partitions", "list_size", "data_dir", "model", "security_protocol"} <= common


def test_example_config_loads() -> None:
    s = Settings.load(ROOT / "config.example.toml", env={})
    assert s == Settings.load(env={}).replace(data_dir=s.data_dir)


def test_to_env_round_trips() -> None:
    s = Settings.load(env={}).replace(list_size=7, scope_to_page_category=True, mmr_lambda=0.5)
    assert Settings.load(env=s.to_env()) == s


def test_example_config_is_current() -> None:
    """config.example.toml is generated by `stream-reco config --format toml`; regenerate it when settings change."""
    from click.testing import CliRunner

    from stream_reco.cli import cli

    out = CliRunner().invoke(cli, ["config", "--format", "toml"], env={"STREAM_RECO_CONFIG": ""}).output
    assert (ROOT / "config.example.toml").read_text() == out


def test_every_field_has_one_known_section() -> None:
    for f in dataclasses.fields(Settings):
        assert f.metadata["section"] in SECTIONS, f.name
        assert isinstance(f.metadata["common"], bool) and isinstance(f.metadata["internal"], bool), f.name
        assert not (f.metadata["common"] and f.metadata["internal"]), f.name
    # the core's knobs and the worker's, as the brief sorted them; a regression here means a field moved section
    assert SECTION_OF["bootstrap"] == SECTION_OF["events_topic"] == SECTION_OF["partitions"] == "kafka"
    assert SECTION_OF["sasl_password"] == "security"
    assert SECTION_OF["mmr_lambda"] == SECTION_OF["list_size"] == "ranking"
    assert SECTION_OF["annoy_search_k"] == SECTION_OF["model"] == "index"
    assert SECTION_OF["commit_interval_s"] == SECTION_OF["data_dir"] == "worker"
    assert SECTION_OF["broker_port"] == SECTION_OF["eval_list_k"] == "tools"


def test_internals_are_the_known_ones() -> None:
    """Adding an internal is a decision (README's configuration section lists them): make it here too."""
    assert {"skip_check_s", "delivery_stall_s", "recovery_stall_s", "dedup_window", "overfetch"} == INTERNAL_FIELDS
    for f in INTERNAL:
        assert f.metadata["doc"].startswith("internal"), f.name


def test_toml_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "reco.toml"
    cfg.write_text('[kafka]\nevents_topic = "from-toml"\npartitions = 3\n\n'
                   '[ranking]\nlist_size = 5\nmmr_lambda = 0.5\n\n[tools]\ntrain_build_annoy = true\n')
    s = Settings.load(cfg, env={})
    assert (s.events_topic, s.partitions, s.list_size, s.mmr_lambda, s.train_build_annoy) == (
        "from-toml", 3, 5, 0.5, True)


def test_env_wins_over_toml_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "reco.toml"
    cfg.write_text('[kafka]\nevents_topic = "from-toml"\n[ranking]\nlist_size = 5\n')
    s = Settings.load(cfg, env={"STREAM_RECO_LIST_SIZE": "8"})
    assert (s.list_size, s.events_topic) == (8, "from-toml")
    assert Settings.load(cfg, env={"STREAM_RECO_LIST_SIZE": "8"}, list_size=3).list_size == 3


def test_flat_keys_still_work_beside_sections(tmp_path: Path) -> None:
    """The form from before sections: keys at the top level, before any table."""
    cfg = tmp_path / "reco.toml"
    cfg.write_text('bootstrap = "k:9094"\nlist_size = 7\n\n[security]\nsecurity_protocol = "SSL"\n')
    s = Settings.load(cfg, env={})
    assert (s.bootstrap, s.list_size, s.security_protocol) == ("k:9094", 7, "SSL")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[ranking]\nevents_topic = "x"\n', r"'events_topic' belongs in the \[kafka\] section, not \[ranking\]"),
        ("[kafka]\nlist_size = 3\n", r"'list_size' belongs in the \[ranking\] section"),
        ("[worker]\nmodel = \"m\"\n", r"'model' belongs in the \[index\] section"),
        ("[kafka]\nevnts_topic = \"x\"\n", r"unknown setting 'evnts_topic' in \[kafka\].*did you mean 'events_topic'"),
        ("[rankng]\nlist_size = 3\n", r"unknown section \[rankng\]"),
        ("ranking = 3\n", r"'ranking' .* is a section"),
        ('list_size = 3\n[ranking]\nlist_size = 4\n', r"'list_size' is given twice"),
        ("[ranking]\nlist_size = [1, 2]\n", r"list_size from .* is not a valid int"),
    ],
)
def test_bad_toml_names_the_key_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "reco.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=message):
        Settings.load(cfg, env={})


@pytest.mark.parametrize("f", INTERNAL, ids=lambda f: f.name)
def test_internals_are_not_settable_from_env(f: dataclasses.Field, caplog: pytest.LogCaptureFixture) -> None:
    default = getattr(Settings(), f.name)
    variable = ENV_PREFIX + f.name.upper()
    with caplog.at_level(logging.WARNING, logger="stream_reco.settings"):
        s = Settings.load(env={variable: "7"})
    assert getattr(s, f.name) == default
    assert variable in caplog.text and "internal" in caplog.text


@pytest.mark.parametrize("f", INTERNAL, ids=lambda f: f.name)
@pytest.mark.parametrize("in_section", [False, True])
def test_internals_are_not_settable_from_toml(tmp_path: Path, f: dataclasses.Field, in_section: bool) -> None:
    cfg = tmp_path / "reco.toml"
    cfg.write_text((f"[{f.metadata['section']}]\n" if in_section else "") + f"{f.name} = 7\n")
    with pytest.raises(SettingsError, match=f"'{f.name}' .* is not a setting"):
        Settings.load(cfg, env={})


def test_internals_are_set_by_code_and_reach_child_processes() -> None:
    """Tests set internals with `replace`; a worker they start as a child process gets them through `to_env`."""
    s = Settings.load(env={}).replace(recovery_stall_s=45.0, dedup_window=8)
    env = s.to_env()
    assert not any(ENV_PREFIX + name.upper() in env for name in INTERNAL_FIELDS)
    assert Settings.load(env=env) == s
    assert INTERNALS_ENV not in Settings.load(env={}).to_env(), "defaults travel without the private variable"
    with pytest.raises(SettingsError, match="list_size"):
        Settings.load(env={INTERNALS_ENV: '{"list_size": 3}'})


def test_config_prints_effective_values_by_section() -> None:
    s = Settings.load(env={"STREAM_RECO_SASL_PASSWORD": "hunter2", "STREAM_RECO_LIST_SIZE": "7"})
    out = render_effective(s)
    assert "hunter2" not in out and 'sasl_password = "***"' in out
    main, internal = out.split("# internal", 1)
    parsed = tomllib.loads(main)
    assert list(parsed) == list(SECTIONS)
    assert parsed["ranking"]["list_size"] == 7
    assert all(SECTION_OF[k] == section for section, keys in parsed.items() for k in keys)
    assert sorted(k for keys in parsed.values() for k in keys) == sorted(f.name for f in SETTINGS_FIELDS)
    assert all(f"# {name} = " in internal for name in INTERNAL_FIELDS)
    assert "STREAM_RECO_LIST_SIZE" in render_effective(s, doc=True)
