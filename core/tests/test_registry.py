"""DetectorRegistry and the factory: validation, lookup, lazy targets, helpful errors."""

from __future__ import annotations

import pytest

from adcore.registry import DetectorImportError, DetectorRegistry, DuplicateDetectorError, ModelNotFoundError


def make_registry() -> DetectorRegistry:
    registry = DetectorRegistry()
    registry._source = ("ad_thing", "ad-thing", "1.2.3")
    registry.add("alpha_detector", "ad_thing.never_imported:Alpha", category="statistical", paper="A", trains=False)
    registry.add("beta_detector", "ad_thing.never_imported:Beta", category="memory_based")
    return registry


def test_entries_record_their_distribution_and_card():
    entry = make_registry().get("alpha_detector")
    assert (entry.distribution, entry.version, entry.plugin) == ("ad-thing", "1.2.3", "ad_thing")
    assert entry.card == {"paper": "A", "trains": False}
    assert entry.as_dict()["target"] == "ad_thing.never_imported:Alpha"


def test_qualified_names_resolve_by_distribution_or_plugin():
    registry = make_registry()
    assert registry.get("ad-thing:alpha_detector").name == "alpha_detector"
    assert registry.get("ad_thing:alpha_detector").name == "alpha_detector"
    with pytest.raises(ModelNotFoundError):
        registry.get("ad-other:alpha_detector")


def test_select_by_pattern_and_category():
    registry = make_registry()
    assert [e.name for e in registry.select("*_detector", "memory_based")] == ["beta_detector"]
    assert [e.name for e in registry.select("alpha*")] == ["alpha_detector"]


def test_unknown_name_suggests_close_matches_and_is_a_key_error():
    with pytest.raises(KeyError) as info:
        make_registry().get("alpha_detectr")
    assert isinstance(info.value, ModelNotFoundError)
    assert "alpha_detector" in str(info.value)


def test_unknown_first_party_name_says_what_to_install():
    with pytest.raises(ModelNotFoundError) as info:
        make_registry().get("fastflow")
    assert "pip install ad-flow" in str(info.value)


@pytest.mark.parametrize("name", ["Upper", "1starts_with_digit", "has-dash", "", "spa ce"])
def test_invalid_names_are_rejected(name: str):
    with pytest.raises(ValueError, match="invalid"):
        DetectorRegistry().add(name, "a.b:C", category="statistical")


def test_invalid_targets_and_categories_are_rejected():
    registry = DetectorRegistry()
    with pytest.raises(ValueError, match="module:attr|ClassName"):
        registry.add("x_detector", "no_colon_here", category="statistical")
    with pytest.raises(TypeError):
        registry.add("x_detector", 42, category="statistical")
    with pytest.raises(ValueError, match="category"):
        registry.add("x_detector", "a.b:C", category="")
    with pytest.raises(TypeError, match="quick_params"):
        registry.add("x_detector", "a.b:C", category="statistical", quick_params=[1])


def test_duplicate_names_keep_the_first_registration():
    registry = make_registry()
    with pytest.raises(DuplicateDetectorError, match="already registered by ad-thing"):
        registry.add("alpha_detector", "other:Thing", category="statistical")
    assert registry.get("alpha_detector").target == "ad_thing.never_imported:Alpha"


def test_lazy_target_import_failure_names_the_distribution():
    with pytest.raises(DetectorImportError, match="ad-thing 1.2.3"):
        make_registry().get("alpha_detector").load()


def test_callable_targets_are_allowed():
    class Detector:
        pass

    registry = DetectorRegistry()
    registry.add("callable_detector", Detector, category="statistical")
    assert registry.get("callable_detector").load() is Detector


def test_get_model_rejects_objects_that_are_not_detectors(monkeypatch):
    import adcore
    from adcore import factory
    from adcore.registry import DetectorEntry

    entry = DetectorEntry("bogus", lambda **_: object(), "example", "ad-bogus", "9.9")
    monkeypatch.setattr(factory, "get_entry", lambda name: entry)
    with pytest.raises(TypeError, match="ad-bogus 9.9"):
        adcore.get_model("bogus")


def test_list_models_by_category_includes_the_example_plugin():
    import adcore

    grouped = adcore.list_models_by_category()
    assert "example_gaussian" in grouped["example"]
    assert adcore.list_models("example_*") == ["example_gaussian"]


def test_factory_answers_what_the_cli_and_the_benchmark_ask(monkeypatch):
    import pluggy

    import adcore
    from adcore import factory
    from adcore.plugins import PluginFailure, PluginHost, PluginInfo
    from adcore.registry import BackboneRegistry

    assert [entry.name for entry in factory.detector_entries("example_*")] == ["example_gaussian"]
    assert factory.find_entry("example_gaussian") is factory.get_entry("example_gaussian")
    assert factory.find_entry("not_registered_xyz") is None
    every = factory.detector_entries()
    assert [(e.category, e.name) for e in every] == sorted((e.category, e.name) for e in every)
    assert factory.detector_entries(category="example") == [e for e in every if e.category == "example"]

    registry = make_registry()
    failure = PluginFailure("ad_bad", "ad-bad", "0.1", "import", "ImportError: nope", details="Traceback ...")
    info = PluginInfo("ad_thing", "ad-thing", "1.2.3", "ad_thing.plugin", 0.01, ["alpha_detector"])
    host = PluginHost(pluggy.PluginManager("adcore"), registry, BackboneRegistry(), [info], [failure])
    monkeypatch.setattr(factory, "get_host", lambda: host)
    assert factory.plugin_failures() == [failure] and factory.loaded_plugins() == [info]
    assert factory.plugin_versions() == {"adcore": adcore.__version__, "ad-thing": "1.2.3"}
    report = factory.plugin_report()
    assert [d["name"] for d in report["detectors"]] == ["beta_detector", "alpha_detector"]  # by category, then name
    assert report["failures"] == [{k: v for k, v in failure.as_dict().items() if k != "details"}]
    assert factory.plugin_report(details=True)["failures"][0]["details"] == "Traceback ..."
    assert host.failures[0].details == "Traceback ..."  # the report is a copy


def test_factory_errors_are_adcore_errors_with_their_stdlib_base():
    import adcore
    from adcore.errors import AdcoreError

    with pytest.raises(AdcoreError) as info:
        adcore.get_model("example_gaussian", not_a_parameter=1)
    assert isinstance(info.value, TypeError) and "not_a_parameter" in str(info.value)
    with pytest.raises(AdcoreError) as info:
        adcore.get_model("example_gausian")
    assert isinstance(info.value, KeyError) and "Did you mean: example_gaussian?" in str(info.value)


def test_the_kit_reaches_offline_weight_providers_through_lookups(monkeypatch):
    from adcore import lookups
    from adcore.plugins import get_host

    # installed by adcore.factory at `import adcore`: the registry's providers, asked for without importing the host
    provider = get_host().backbones.get("tf_efficientnet_lite0")
    assert provider is not None and lookups.weight_provider_for("tf_efficientnet_lite0") is provider
    assert lookups.weight_provider_for("not_a_backbone_xyz") is None
    monkeypatch.setattr(lookups, "_weight_provider_lookup", None)
    assert lookups.weight_provider_for("tf_efficientnet_lite0") is None  # the kit alone knows no provider
