"""Plugins cannot take the line down: name conflicts are explicit, and a plugin cannot end, silence
or hang the process (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import adcore
from adcore.plugins import PluginTimeoutError, load_plugins, reset_plugins
from adcore.registry import AmbiguousDetectorError

RIVAL_CLASS = """
    from adcore.base import BaseDetector

    class Rival(BaseDetector):
        def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
            self.input_size = input_size
            self.seed = seed

        def _fit(self, stream):
            self.mean_ = stream.materialize().mean(0)

        def _predict(self, images):
            maps = ((images - self.mean_) ** 2).sum(1)
            return maps.flatten(1).amax(1), maps
"""

# "ad-aaa-rival" sorts before "ad-example": under the old first-wins rule it would have taken the name
RIVAL_HOOK = """
    from adcore import hookimpl

    @hookimpl
    def adcore_register_detectors(registry):
        registry.add("example_gaussian", "{rival}:Rival", category="example")
"""


def run_cli(*args: str, site, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADCORE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "adcore.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


# -- name conflicts -------------------------------------------------------------------------------
def test_conflicting_name_is_listed_twice_and_ambiguous(fake_dist, monkeypatch):
    fake_dist.add("ad-aaa-rival", RIVAL_HOOK, version="0.9", extra_modules={"rival": RIVAL_CLASS})
    host = load_plugins(strict=True)  # a conflict is a warning: both plugins loaded
    (failure,) = [f for f in host.failures if f.stage == "conflict"]
    assert failure.distribution == "ad-example"  # the later of the two in load order reports it
    assert "detector name 'example_gaussian' is registered by ad-aaa-rival 0.9 and ad-example 0.1.0" in failure.error
    assert "choose 'ad-aaa-rival:example_gaussian' or 'ad-example:example_gaussian'" in failure.error
    rows = [e for e in host.detectors if e.name == "example_gaussian"]
    assert {e.distribution for e in rows} == {"ad-example", "ad-aaa-rival"}

    reset_plugins()
    assert {"ad-example:example_gaussian", "ad-aaa-rival:example_gaussian"} <= set(adcore.list_models())
    with pytest.raises(AmbiguousDetectorError) as info:
        adcore.get_model("example_gaussian")
    assert str(info.value) == (
        "detector name 'example_gaussian' is ambiguous: it is registered by ad-aaa-rival 0.9, ad-example 0.1.0. "
        "Choose one: 'ad-aaa-rival:example_gaussian' or 'ad-example:example_gaussian', or set a preference, "
        "e.g. ADCORE_PREFER=example_gaussian=ad-aaa-rival")
    assert type(adcore.get_model("ad-aaa-rival:example_gaussian")).__name__ == "Rival"
    assert type(adcore.get_model("ad-example:example_gaussian")).__name__ == "GaussianPatchDetector"

    monkeypatch.setenv("ADCORE_PREFER", "example_gaussian=ad-aaa-rival")
    reset_plugins()
    assert type(adcore.get_model("example_gaussian")).__name__ == "Rival"
    monkeypatch.setenv("ADCORE_PREFER", "example_gaussian=ad_example")  # pip-style name normalisation
    reset_plugins()
    assert type(adcore.get_model("example_gaussian")).__name__ == "GaussianPatchDetector"


def test_model_file_loads_with_the_distribution_that_wrote_it(fake_dist, gaussian, normal_images, tmp_path):
    fake_dist.add("ad-aaa-rival", RIVAL_HOOK, version="0.9", extra_modules={"rival": RIVAL_CLASS})
    reset_plugins()
    theirs = tmp_path / "gaussian.safetensors"
    gaussian.save(theirs)
    rival = adcore.get_model("ad-aaa-rival:example_gaussian").fit(normal_images)
    mine = tmp_path / "rival.safetensors"
    rival.save(mine)
    from adcore.persistence import read_header

    assert read_header(theirs)["distribution"] == "ad-example"
    assert read_header(mine)["distribution"] == "ad-aaa-rival"
    assert type(adcore.load(theirs)).__name__ == "GaussianPatchDetector"
    assert type(adcore.load(mine)).__name__ == "Rival"


def test_cli_list_shows_both_sides_of_a_conflict(fake_dist):
    fake_dist.add("ad-aaa-rival", RIVAL_HOOK, version="0.9", extra_modules={"rival": RIVAL_CLASS})
    result = run_cli("list", "--json", site=fake_dist.site)
    assert result.returncode == 0, result.stderr
    rows = [row for row in json.loads(result.stdout) if row["name"] == "example_gaussian"]
    assert sorted(row["distribution"] for row in rows) == ["ad-aaa-rival", "ad-example"]
    assert "stage 'conflict'" in result.stderr


# -- a plugin cannot end or silence the process ---------------------------------------------------------
def test_sys_exit_inside_a_hook_is_that_plugins_failure(fake_dist):
    broken = fake_dist.add("ad-exit-hook", """
        import sys
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("exit_half", "x.y:Z", category="example")
            sys.exit(4)
    """)
    host = load_plugins()
    (failure,) = [f for f in host.failures if f.distribution == "ad-exit-hook"]
    assert (failure.plugin, failure.stage, failure.error) == (broken.module, "hook", "SystemExit: 4")
    assert "exit_half" not in host.detectors and "example_gaussian" in host.detectors


NOISY = """
    print("hello from import")
    from adcore import hookimpl

    @hookimpl
    def adcore_register_detectors(registry):
        print("hello from the hook")
        registry.add("{mod}_ok", "ad_example.gaussian:GaussianPatchDetector", category="example")
"""


def test_what_a_plugin_prints_goes_to_stderr(fake_dist, capsys):
    noisy = fake_dist.add("ad-noisy", NOISY)
    host = load_plugins()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "hello from import" in captured.err and "hello from the hook" in captured.err
    assert f"{noisy.module}_ok" in host.detectors


def test_cli_json_stays_parseable_with_a_noisy_plugin(fake_dist):
    noisy = fake_dist.add("ad-noisy", NOISY)
    for command in (("list", "--json"), ("plugins",)):
        result = run_cli(*command, site=fake_dist.site)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)  # nothing but the JSON on stdout
        assert "hello from import" in result.stderr and "hello from the hook" in result.stderr
    assert f"{noisy.module}_ok" in result.stdout


def test_malformed_entry_point_value_says_so(fake_dist):
    broken = fake_dist.add("ad-malformed", "x = 1\n")
    info = broken.site / "ad_malformed-0.1.0.dist-info" / "entry_points.txt"
    info.write_text(f"[adcore]\n{broken.module} = not a module ! at all\n")
    host = load_plugins()
    (failure,) = [f for f in host.failures if f.distribution == "ad-malformed"]
    assert failure.stage == "import"
    assert failure.error.startswith("entry point value 'not a module ! at all' is not module:attr")
    assert "example_gaussian" in host.detectors


# -- a plugin that hangs on import ----------------------------------------------------------------------
def test_hanging_plugin_is_named_and_given_up_on(fake_dist, monkeypatch, capsys):
    monkeypatch.setenv("ADCORE_SLOW_IMPORT_SECONDS", "0.2")
    monkeypatch.setenv("ADCORE_PLUGIN_TIMEOUT", "1")
    hang = fake_dist.add("ad-hang", "import time\ntime.sleep(600)\n", version="6.6")
    started = time.perf_counter()
    with pytest.raises(PluginTimeoutError) as info:
        load_plugins()
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert message.startswith(f"plugin '{hang.module}' of ad-hang 6.6 did not finish importing within 1 s "
                              "(ADCORE_PLUGIN_TIMEOUT)")
    assert "ADCORE_DISABLE_PLUGINS=ad-hang" in message and "pip uninstall ad-hang" in message
    assert f"adcore: still importing plugin '{hang.module}' from ad-hang 6.6 after 0.2 s" in capsys.readouterr().err
    started = time.perf_counter()
    with pytest.raises(PluginTimeoutError):  # its import locks may be held: never waited on twice
        load_plugins()
    assert time.perf_counter() - started < 0.5
    monkeypatch.setenv("ADCORE_DISABLE_PLUGINS", "ad-hang")
    assert "example_gaussian" in load_plugins().detectors


def test_cli_gives_up_on_a_hanging_plugin(fake_dist):
    fake_dist.add("ad-hang", "import time\ntime.sleep(600)\n", version="6.6")
    started = time.perf_counter()
    result = run_cli("list", site=fake_dist.site,
                     env_extra={"ADCORE_SLOW_IMPORT_SECONDS": "0.5", "ADCORE_PLUGIN_TIMEOUT": "2"})
    assert time.perf_counter() - started < 60
    assert result.returncode != 0
    assert "still importing plugin" in result.stderr
    assert "ad-hang 6.6 did not finish importing within 2 s" in result.stderr
    assert "ADCORE_DISABLE_PLUGINS=ad-hang" in result.stderr


def test_plugin_errors_and_exits_still_reach_the_caller_thread(fake_dist):
    fake_dist.add("ad-exit-import", "import sys\nsys.exit(7)\n")
    (failure,) = [f for f in load_plugins().failures if f.distribution == "ad-exit-import"]
    assert (failure.stage, failure.error) == ("import", "SystemExit: 7")
