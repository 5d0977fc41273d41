"""Broken plugins are isolated and reported with distribution, version, stage and error.

Each test installs fake distributions (``*.dist-info`` + modules, see ``fake_dist`` in conftest)
next to a healthy one and checks that the healthy one, and every real installed plugin, still works.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest

import adcore
from adcore.plugins import PluginLoadError, load_plugins

HEALTHY = """
    from adcore import hookimpl

    @hookimpl
    def adcore_register_detectors(registry):
        registry.add("{mod}_ok", "ad_example.gaussian:GaussianPatchDetector", category="example")
"""

GOOD_CLASS = """
    from adcore.base import BaseDetector

    class Good(BaseDetector):
        def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
            self.input_size = input_size
            self.seed = seed

        def _fit(self, stream):
            self.mean_ = stream.materialize().mean(0)

        def _predict(self, images):
            maps = ((images - self.mean_) ** 2).sum(1)
            return maps.flatten(1).amax(1), maps
"""

BROKEN = {
    "import error": ("import", r"ModuleNotFoundError: No module named 'not_a_real_module_xyz'",
                     "import not_a_real_module_xyz\n"),
    "sys.exit on import": ("import", r"SystemExit: 3", "import sys\nsys.exit(3)\n"),
    "bad hook signature": ("register", r"PluginValidationError: .*unknown_argument", """
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detectors(registry, unknown_argument):
            pass
    """),
    "raising hook": ("hook", r"RuntimeError: boom in hook", """
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("half_registered", "x.y:Z", category="example")
            raise RuntimeError("boom in hook")
    """),
    "misspelled hook": ("check", r"unknown hook\(s\) \['adcore_register_detector'\]; known hooks are "
                                 r"\['adcore_register_backbones', 'adcore_register_detectors'\]", """
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detector(registry):
            registry.add("never_seen", "x.y:Z", category="example")
    """),
    "unmarked hook": ("check", r"adcore_register_detectors defined but not marked as a hook: decorate it with "
                               r"@adcore.hookimpl", """
        def adcore_register_detectors(registry):
            registry.add("never_seen", "x.y:Z", category="example")
    """),
    "invalid detector name": ("hook", r"InvalidInputError: detector name 'Bad-Name' is invalid", """
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("Bad-Name", "x.y:Z", category="example")
    """),
    "entry point names a function": ("import", r"must name a module holding hook implementations, got function", """
        def hooks():
            pass
    """),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_is_isolated_and_reported(fake_dist, case):
    stage, error, source = BROKEN[case]
    healthy = fake_dist.add("ad-healthy", HEALTHY, version="1.0.0")
    if case == "entry point names a function":
        broken = fake_dist.add("ad-broken", source, version="0.3.1")
        (broken.site / f"{broken.dist.replace('-', '_')}-0.3.1.dist-info" / "entry_points.txt").write_text(
            f"[adcore]\n{broken.module} = {broken.module}:hooks\n")
    else:
        broken = fake_dist.add("ad-broken", source, version="0.3.1")
    host = load_plugins()
    failures = [f for f in host.failures if f.distribution == "ad-broken"]
    assert len(failures) == 1, host.failures
    failure = failures[0]
    assert (failure.plugin, failure.version, failure.stage) == (broken.module, "0.3.1", stage)
    assert failure.describe().startswith(f"ad-broken 0.3.1 (plugin '{broken.module}') failed at stage '{stage}': ")
    assert re.search(error, failure.error, re.S), failure.error
    assert f"{healthy.module}_ok" in host.detectors and "example_gaussian" in host.detectors
    assert "half_registered" not in host.detectors and "never_seen" not in host.detectors
    assert broken.module not in [p.plugin for p in host.plugins]
    json.dumps(host.report())  # `adcore plugins` prints this


def test_duplicate_detector_name_within_one_distribution_keeps_the_first(fake_dist):
    plugin = fake_dist.add("ad-aaa", """
        from adcore import hookimpl

        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("{mod}_ok", "ad_example.gaussian:GaussianPatchDetector", category="example")
            registry.add("{mod}_ok", "x.y:Z", category="example")
            registry.add("aaa_unique", "ad_example.gaussian:GaussianPatchDetector", category="example")
    """)
    host = load_plugins()
    (failure,) = [f for f in host.failures if f.distribution == "ad-aaa"]
    assert failure.stage == "duplicate"
    assert f"detector name '{plugin.module}_ok' from ad-aaa 0.1.0 is already registered by ad-aaa 0.1.0" in failure.error
    assert host.detectors.get(f"{plugin.module}_ok").target == "ad_example.gaussian:GaussianPatchDetector"
    assert "aaa_unique" in host.detectors  # the plugin's other detector is kept


def test_non_conforming_detector_classes_are_dropped(fake_dist):
    fake_dist.add("ad-shapes", """
        from adcore import hookimpl
        from adcore.base import BaseDetector
        from {good} import Good

        class NoPredict:
            def fit(self, data):
                return self

            def get_params(self):
                return {{}}

        class Abstract(BaseDetector):
            def __init__(self, *, seed: int = 0) -> None:
                self.seed = seed

            def _fit(self, stream):
                pass

        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("no_predict", NoPredict, category="example")
            registry.add("abstract_one", Abstract, category="example")
            registry.add("good_eager", Good, category="example")
            registry.add("bad_lazy", "{good}:NotADetector", category="example")
            registry.add("missing_lazy", "{mod}_missing_module:Thing", category="example")
    """.replace("{{}}", "{}"), extra_modules={"good": textwrap.dedent(GOOD_CLASS) + "\n\nclass NotADetector:\n    pass\n"})
    host = load_plugins()
    failures = {f.error.split("'")[1]: f for f in host.failures if f.distribution == "ad-shapes" and "'" in f.error}
    assert len(failures) == len([f for f in host.failures if f.distribution == "ad-shapes"]), host.failures
    assert set(failures) == {"no_predict", "abstract_one"}
    assert failures["no_predict"].stage == "detector"
    assert "lacks predict (the AnomalyDetector protocol needs fit, predict and get_params)" in failures["no_predict"].error
    assert "is abstract (does not implement _predict)" in failures["abstract_one"].error
    assert "good_eager" in host.detectors and "bad_lazy" in host.detectors  # lazy targets are checked when built

    adcore.plugins.reset_plugins()
    from adcore.base import COMMON_PARAMETERS

    assert adcore.get_model("good_eager").get_params() == {"input_size": 32, "seed": 0, **COMMON_PARAMETERS}
    with pytest.raises(TypeError, match=r"ad-shapes 0.1.0 registered 'bad_lazy' but .*NotADetector built a NotADetector, "
                                        r"which lacks fit/predict/get_params"):
        adcore.get_model("bad_lazy")
    with pytest.raises(ImportError, match=r"detector 'missing_lazy' from ad-shapes 0.1.0 could not be imported"):
        adcore.get_model("missing_lazy")


def test_slow_import_is_reported_but_loads(fake_dist, monkeypatch):
    monkeypatch.setenv("ADCORE_SLOW_IMPORT_SECONDS", "0.05")
    slow = fake_dist.add("ad-slow", "import time\ntime.sleep(0.2)\n" + textwrap.dedent(HEALTHY), version="1.1")
    host = load_plugins(strict=True)  # a warning: strict mode does not fail on it alone
    (failure,) = [f for f in host.failures if f.distribution == "ad-slow"]
    assert failure.stage == "slow-import"
    assert "importing took 0.2 s (> 0.05 s; it still loaded)" in failure.error
    assert f"{slow.module}_ok" in host.detectors


def test_malformed_entry_points_file_hides_only_its_distribution(fake_dist):
    healthy = fake_dist.add("ad-healthy", HEALTHY)
    fake_dist.add("ad-garbled", HEALTHY, entry_points_text="[adcore]\nthis line has no equals sign\n=x\n")
    host = load_plugins()
    (failure,) = [f for f in host.failures if f.distribution == "ad-garbled"]
    assert failure.stage == "discover" and "cannot read the entry points of" in failure.error
    assert f"{healthy.module}_ok" in host.detectors and "example_gaussian" in host.detectors


def test_two_distributions_claiming_one_plugin_name(fake_dist):
    first = fake_dist.add("ad-first", HEALTHY)
    fake_dist.add("ad-second", HEALTHY, entry_point_name=first.module)
    host = load_plugins()
    (failure,) = [f for f in host.failures if f.distribution == "ad-second"]
    assert failure.stage == "discover"
    assert f"plugin name '{first.module}' is already provided by ad-first" in failure.error


def test_strict_mode_raises_with_every_failure(fake_dist, monkeypatch):
    fake_dist.add("ad-healthy", HEALTHY)
    fake_dist.add("ad-broken-a", BROKEN["import error"][2], version="0.1")
    fake_dist.add("ad-broken-b", BROKEN["raising hook"][2], version="0.2")
    monkeypatch.setenv("ADCORE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError) as info:
        load_plugins()
    message = str(info.value)
    assert message.startswith("2 adcore plugin(s) failed to load (strict mode):")
    assert "ad-broken-a 0.1" in message and "failed at stage 'import'" in message
    assert "ad-broken-b 0.2" in message and "failed at stage 'hook': RuntimeError: boom in hook" in message
    assert "ADCORE_DISABLE_PLUGINS" in message
    assert {f.distribution for f in info.value.failures} == {"ad-broken-a", "ad-broken-b"}
    with pytest.raises(PluginLoadError):
        adcore.list_models()  # the lazy front door honours strict mode too
    monkeypatch.setenv("ADCORE_DISABLE_PLUGINS", "ad-broken-a, ad_broken_b")
    adcore.plugins.reset_plugins()
    assert "example_gaussian" in adcore.list_models()


def test_disable_plugins_by_distribution_or_plugin_name(fake_dist, monkeypatch):
    healthy = fake_dist.add("ad-healthy", HEALTHY)
    broken = fake_dist.add("ad-broken", BROKEN["sys.exit on import"][2])
    monkeypatch.setenv("ADCORE_DISABLE_PLUGINS", f"ad-healthy,{broken.module}")
    host = load_plugins(strict=True)
    assert not [f for f in host.failures if f.distribution in ("ad-healthy", "ad-broken")]
    assert f"{healthy.module}_ok" not in host.detectors and "example_gaussian" in host.detectors


def test_ctrl_c_during_plugin_import_is_not_swallowed(fake_dist):
    fake_dist.add("ad-interrupt", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_plugins()


def test_failure_details_carry_the_traceback(fake_dist):
    broken = fake_dist.add("ad-broken", BROKEN["raising hook"][2])
    (failure,) = [f for f in load_plugins().failures if f.distribution == "ad-broken"]
    assert "Traceback" in failure.details and f"{broken.module}.py" in failure.details
    assert set(failure.as_dict()) == {"plugin", "distribution", "version", "stage", "error", "details"}
