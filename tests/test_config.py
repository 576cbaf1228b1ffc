"""Configuration: precedence, file errors, env:/file: indirection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecloud.config import SETTINGS, Config, _count, _seconds, _template_id, load_config
from ecloud.errors import ConfigError


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path, monkeypatch):
    """Run every test in an empty folder, so no ./ecloud.toml is found by accident."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults(home):
    config = load_config({}, {"HOME": str(home)})
    assert config == Config(
        db="sqlite:///ecloud.db", broker=None, cluster="ecloud",
        resend_after=5.0, snapshot_every=10000, file=None,
    )
    assert {origin for _, _, origin in config.describe()} == {"default"}


def test_flags_beat_env_beat_file_beat_defaults(tmp_path, home):
    path = write(tmp_path / "c.toml", 'db = "sqlite:///file.db"\ncluster = "from-file"\n'
                                      'broker = "mqtt://file:1883"\nresend_after = 12\n')
    env = {"HOME": str(home), "ECLOUD_CONFIG": str(path),
           "ECLOUD_DB": "sqlite:///env.db", "ECLOUD_CLUSTER": "from-env"}
    flags = {"db": "sqlite:///flag.db", "cluster": None}  # None: the flag was not given
    config = load_config(flags, env)
    assert (config.db, config.cluster, config.broker, config.resend_after, config.snapshot_every) == (
        "sqlite:///flag.db", "from-env", "mqtt://file:1883", 12.0, 10000,
    )
    assert config.file == str(path)
    assert config.describe() == [
        ("db", "sqlite:///flag.db", "flag --db"),
        ("broker", "mqtt://file:1883", f"file {path}"),
        ("cluster", "from-env", "env ECLOUD_CLUSTER"),
        ("resend_after", "12.0", f"file {path}"),
        ("snapshot_every", "10000", "default"),
        ("snapshot_interval", "300.0", "default"),
        ("boss_address", "(none)", "default"),
        ("one_url", "(none)", "default"),
        ("one_session", "(none)", "default"),
        ("one_template", "(none)", "default"),
        ("one_deadline", "30.0", "default"),
        ("one_poll", "2.0", "default"),
        ("one_kill_orphans_after", "(none)", "default"),
        ("takeover_after", "10.0", "default"),
        ("datastore_key_file", "(none)", "default"),
        ("broker_ca", "(none)", "default"),
        ("broker_user", "(none)", "default"),
        ("broker_password", "(none)", "default"),
        ("broker_passwd_file", "(none)", "default"),
        ("broker_pid_file", "(none)", "default"),
        ("worker_secret", "(none)", "default"),
        ("web_address", "(none)", "default"),
        ("web_hosts", "(none)", "default"),
        ("local_boss_grace", "120.0", "default"),
    ]


def test_numbers_from_env_and_flags_are_parsed(home):
    env = {"HOME": str(home), "ECLOUD_RESEND_AFTER": "2.5", "ECLOUD_SNAPSHOT_EVERY": "50"}
    config = load_config({"snapshot_every": "70"}, env)
    assert (config.resend_after, config.snapshot_every) == (2.5, 70)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.parse in (_seconds, _count,
                                                                          _template_id)],
                         ids=lambda s: s.env)
def test_every_number_setting_is_read_from_its_environment_variable(home, setting):
    """Environment variables are text: a number setting without a text parser
    refused every value (ECLOUD_LOCAL_BOSS_GRACE did, once)."""
    value = setting.default if setting.default is not None else 7
    config = load_config({}, {"HOME": str(home), setting.env: str(value)})
    assert getattr(config, setting.name) == value


def test_empty_env_var_counts_as_unset(home):
    assert load_config({}, {"HOME": str(home), "ECLOUD_DB": ""}).db == "sqlite:///ecloud.db"


def test_config_flag_beats_env(tmp_path, home):
    a = write(tmp_path / "a.toml", 'cluster = "a"\n')
    b = write(tmp_path / "b.toml", 'cluster = "b"\n')
    config = load_config({"config": str(a)}, {"HOME": str(home), "ECLOUD_CONFIG": str(b)})
    assert (config.cluster, config.file) == ("a", str(a))


def test_local_file_beats_user_file(empty_cwd, home):
    write(home / ".config" / "ecloud" / "ecloud.toml", 'cluster = "user"\n')
    assert load_config({}, {"HOME": str(home)}).cluster == "user"
    write(empty_cwd / "ecloud.toml", 'cluster = "local"\n')
    config = load_config({}, {"HOME": str(home)})
    assert (config.cluster, config.file) == ("local", "ecloud.toml")


def test_xdg_config_home_is_honoured(tmp_path, home):
    write(tmp_path / "xdg" / "ecloud" / "ecloud.toml", 'cluster = "xdg"\n')
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert load_config({}, env).cluster == "xdg"


# ------------------------------------------------------------------ errors


def test_named_config_file_must_exist(tmp_path, home):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config({"config": str(path)}, {"HOME": str(home)})
    assert str(info.value) == f"config file {path} does not exist"


def test_unreadable_config_file(tmp_path, home):
    path = tmp_path / "dir.toml"
    path.mkdir()  # a folder cannot be read as a file, even by root
    with pytest.raises(ConfigError, match=f"^cannot read config file {path}: "):
        load_config({"config": str(path)}, {"HOME": str(home)})


def test_invalid_toml(tmp_path, home):
    path = write(tmp_path / "bad.toml", "db = \n")
    with pytest.raises(ConfigError, match=f"^config file {path} is not valid TOML: "):
        load_config({}, {"HOME": str(home), "ECLOUD_CONFIG": str(path)})


def test_unknown_keys_name_file_and_key(tmp_path, home):
    path = write(tmp_path / "c.toml", 'clustr = "x"\nzzz = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config({"config": str(path)}, {"HOME": str(home)})
    assert str(info.value) == f"{path}: unknown key 'clustr' (did you mean 'cluster'?); unknown key 'zzz'"


@pytest.mark.parametrize(
    "line, message",
    [
        ("resend_after = \"30\"", "key 'resend_after': expected a number of seconds, got str"),
        ("resend_after = 0", "key 'resend_after': expected a number of seconds > 0, got 0"),
        ("snapshot_every = 1.5", "key 'snapshot_every': expected a whole number, got float"),
        ("snapshot_every = true", "key 'snapshot_every': expected a whole number, got bool"),
        ("db = 5", "key 'db': expected a non-empty string"),
        ("cluster = \"a/b\"", "key 'cluster': 'a/b' may only hold letters, digits, '_', '.' and '-'"),
        ("broker = [\"x\"]", "key 'broker': expected a non-empty string"),
    ],
)
def test_wrong_types_in_file(tmp_path, home, line, message):
    path = write(tmp_path / "c.toml", line + "\n")
    with pytest.raises(ConfigError) as info:
        load_config({"config": str(path)}, {"HOME": str(home)})
    assert str(info.value) == f"{path}: {message}"


def test_bad_env_value_names_the_variable(home):
    with pytest.raises(ConfigError) as info:
        load_config({}, {"HOME": str(home), "ECLOUD_SNAPSHOT_EVERY": "lots"})
    assert str(info.value) == (
        "env ECLOUD_SNAPSHOT_EVERY (snapshot_every): expected a whole number, got 'lots'")


def test_bad_flag_value_names_the_flag(home):
    with pytest.raises(ConfigError) as info:
        load_config({"resend_after": "-3"}, {"HOME": str(home)})
    assert str(info.value) == (
        "flag --resend-after (resend_after): expected a number of seconds > 0, got -3.0"
    )


def test_unknown_flag_is_a_programming_error(home):
    with pytest.raises(ValueError, match="unknown flags"):
        load_config({"dbb": "x"}, {"HOME": str(home)})


# ------------------------------------------------------------------ secrets


def test_db_from_env_indirection(home):
    env = {"HOME": str(home), "ECLOUD_DB": "env:DB_URL", "DB_URL": "  mysql://u:pw@h/db\n"}
    config = load_config({}, env)
    assert config.db == "mysql://u:pw@h/db"
    assert config.describe()[0] == ("db", "mysql://u:***@h/db", "env ECLOUD_DB via env DB_URL")
    assert "pw" not in repr(config)


def test_db_from_file_indirection_relative_to_config_file(tmp_path, home):
    write(tmp_path / "conf" / "secrets" / "db", "mysql://u:s3cret@h/db\n")
    path = write(tmp_path / "conf" / "ecloud.toml", 'db = "file:secrets/db"\n')
    config = load_config({"config": str(path)}, {"HOME": str(home)})
    assert config.db == "mysql://u:s3cret@h/db"
    assert config.describe()[0] == (
        "db", "mysql://u:***@h/db", f"file {path} via file {tmp_path / 'conf' / 'secrets' / 'db'}",
    )


def test_db_from_file_flag(tmp_path, home):
    secret = write(tmp_path / "db.url", "sqlite:///secret.db")
    assert load_config({"db": f"file:{secret}"}, {"HOME": str(home)}).db == "sqlite:///secret.db"


def test_indirection_errors(tmp_path, home):
    with pytest.raises(ConfigError) as info:
        load_config({}, {"HOME": str(home), "ECLOUD_DB": "env:NOPE"})
    assert str(info.value) == "env ECLOUD_DB (db): refers to environment variable NOPE, which is not set"

    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"^flag --db \\(db\\): cannot read {missing}: "):
        load_config({"db": f"file:{missing}"}, {"HOME": str(home)})

    path = write(tmp_path / "c.toml", 'db = "file:empty"\n')
    write(tmp_path / "empty", "\n")
    with pytest.raises(ConfigError) as info:
        load_config({"config": str(path)}, {"HOME": str(home)})
    assert str(info.value) == f"{path}: key 'db': {tmp_path / 'empty'} is empty"


def test_the_opennebula_settings_are_checked_and_the_session_never_shown(tmp_path, home):
    env = {"HOME": str(home), "ONE_AUTH_TEST": "oneadmin:secret-pw", "ECLOUD_ONE_TEMPLATE": "0",
           "ECLOUD_ONE_URL": "http://one.example:2633/RPC2", "ECLOUD_ONE_SESSION": "env:ONE_AUTH_TEST"}
    config = load_config({}, env)
    assert (config.one_url, config.one_session, config.one_template) == (
        "http://one.example:2633/RPC2", "oneadmin:secret-pw", 0)
    shown = {name: value for name, value, _ in config.describe()}
    assert shown["one_session"] == "*** (set)"
    assert "secret-pw" not in repr(config)
    with pytest.raises(ConfigError, match="expected http"):
        load_config({}, {"HOME": str(home), "ECLOUD_ONE_URL": "one.example:2633"})


# ------------------------------------------------------------------ the datastore key


def test_the_datastore_key_file_is_a_path_shown_as_such(tmp_path, home):
    env = {"HOME": str(home), "ECLOUD_DATASTORE_KEY_FILE": "~/keys/id_datastore"}
    config = load_config({}, env)
    assert config.datastore_key_file == str(home / "keys" / "id_datastore")  # never read here
    shown = {name: (value, origin) for name, value, origin in config.describe()}
    assert shown["datastore_key_file"] == (str(home / "keys" / "id_datastore"),
                                           "env ECLOUD_DATASTORE_KEY_FILE")
    # in the config file, relative to the file's folder (like file:PATH)
    path = write(tmp_path / "conf" / "ecloud.toml", 'datastore_key_file = "keys/ds"\n')
    config = load_config({"config": str(path)}, {"HOME": str(home)})
    assert config.datastore_key_file == str(tmp_path / "conf" / "keys" / "ds")


def boss_start(tmp_path: Path, home: Path, **env: str) -> subprocess.CompletedProcess:
    """``ecloud-boss --provider opennebula``, as an operator starts it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECLOUD_")}
    base.update(HOME=str(home), ECLOUD_DB=f"sqlite:///{tmp_path / 'events.db'}",
                ECLOUD_ONE_URL="http://127.0.0.1:9/RPC2", ECLOUD_ONE_SESSION="u:p",
                ECLOUD_ONE_TEMPLATE="0", COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "ecloud.cli.boss", "--provider", "opennebula",
                           "--broker", "mqtt://127.0.0.1:9"], env={**base, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_an_unusable_datastore_key_file_stops_the_boss_at_start_with_one_clear_line(
        tmp_path, home):
    missing = tmp_path / "no-such-key"
    result = boss_start(tmp_path, home, ECLOUD_DATASTORE_KEY_FILE=str(missing))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: setting datastore_key_file (env ECLOUD_DATASTORE_KEY_FILE): cannot read the "
        f"datastore key file {missing}: No such file or directory")
    assert not (tmp_path / "events.db").exists()  # it stopped before touching the log

    folder = tmp_path / "keys"
    folder.mkdir()  # a folder cannot be read as a file, even by root
    result = boss_start(tmp_path, home, ECLOUD_DATASTORE_KEY_FILE=str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot read the datastore key file {folder}: Is a directory" in result.stderr

    empty = write(tmp_path / "conf" / "empty_key", "\n")
    path = write(tmp_path / "conf" / "ecloud.toml", 'datastore_key_file = "empty_key"\n')
    result = boss_start(tmp_path, home, ECLOUD_CONFIG=str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: setting datastore_key_file (file {path}): the datastore key file {empty} is empty")


def test_the_readme_lists_every_setting_with_its_variable_and_default() -> None:
    """The README's configuration table is written by hand (its meanings say
    more than the help strings); its names, variables and defaults are the
    code's."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| `(\w+)` \|[^|]*\| `(\w+)` \| ([^|]+?) \|", section, re.M)}

    def shown(default) -> str:
        if default is None:
            return "none"
        return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"

    assert rows == {s.name: (s.env, shown(s.default)) for s in SETTINGS}
