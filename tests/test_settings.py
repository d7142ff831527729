"""Service settings from the environment: per-service defaults, overrides, and errors that name the variable."""

import pytest

from models.errors import ConfigError
from services.classifier.settings import ClassifierSettings
from services.common.settings import CommonSettings
from services.synthesis.settings import SynthesisSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("REQUEST_TIMEOUT_S", "MAX_CONCURRENCY", "API_TOKEN", "GRPC_PORT", "MAX_REQUEST_BYTES"):
        monkeypatch.delenv(f"LESIONSYNTH_{name}", raising=False)


def test_request_timeout_defaults_per_service_and_overrides(monkeypatch):
    # Synthesis runs a sampler for seconds per image: its REST timeout is 10x the others'.
    assert SynthesisSettings.from_env().common.request_timeout_s == 600.0
    assert ClassifierSettings.from_env().common.request_timeout_s == 60.0
    monkeypatch.setenv("LESIONSYNTH_REQUEST_TIMEOUT_S", "12.5")
    assert ClassifierSettings.from_env().common.request_timeout_s == 12.5
    assert SynthesisSettings.from_env().common.request_timeout_s == 12.5


def test_the_request_byte_limit_defaults_per_service_and_one_variable_overrides_all(monkeypatch):
    from services.training.settings import TrainingSettings

    # Job requests are small JSON: the training service's default is 1 MiB, the model services' 32 MiB.
    assert TrainingSettings.from_env().common.max_request_bytes == 1024 * 1024
    assert ClassifierSettings.from_env().common.max_request_bytes == 32 * 1024 * 1024
    monkeypatch.setenv("LESIONSYNTH_MAX_REQUEST_BYTES", "4096")
    for settings in (TrainingSettings, ClassifierSettings, SynthesisSettings):
        assert settings.from_env().common.max_request_bytes == 4096


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LESIONSYNTH_REQUEST_TIMEOUT_S", "0.5", "LESIONSYNTH_REQUEST_TIMEOUT_S must be >= 1.0, got 0.5"),
        (
            "LESIONSYNTH_REQUEST_TIMEOUT_S",
            "soon",
            "LESIONSYNTH_REQUEST_TIMEOUT_S must be a number, got 'soon'",
        ),
        ("LESIONSYNTH_MAX_CONCURRENCY", "0", "LESIONSYNTH_MAX_CONCURRENCY must be >= 1, got 0"),
        ("LESIONSYNTH_GRPC_PORT", "70000", "LESIONSYNTH_GRPC_PORT must be in [0, 65535], got 70000"),
        ("LESIONSYNTH_API_TOKEN", "short", "LESIONSYNTH_API_TOKEN must be at least 16 characters"),
        ("LESIONSYNTH_MAX_PIXELS", "lots", "LESIONSYNTH_MAX_PIXELS must be an integer, got 'lots'"),
        ("LESIONSYNTH_MIN_IMAGE_SIDE", "0", "LESIONSYNTH_MIN_IMAGE_SIDE must be in [1, 4096], got 0"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        CommonSettings.from_env(default_grpc_port=50052)
    assert message in str(caught.value)


def test_image_limits_are_read_once_per_process(monkeypatch):
    from services.common.settings import process_settings

    monkeypatch.setenv("LESIONSYNTH_MIN_IMAGE_SIDE", "48")
    monkeypatch.setenv("LESIONSYNTH_MAX_PIXELS", "5000")
    process_settings.cache_clear()
    try:
        first = process_settings(ClassifierSettings)
        assert (first.common.min_image_side, first.common.max_pixels) == (48, 5000)
        monkeypatch.setenv("LESIONSYNTH_MAX_PIXELS", "6000")  # the schemas see the instance service.py made
        assert process_settings(ClassifierSettings) is first
    finally:
        process_settings.cache_clear()
    monkeypatch.delenv("LESIONSYNTH_MIN_IMAGE_SIDE")
    assert ClassifierSettings.from_env().common.min_image_side == 32
