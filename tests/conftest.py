"""Shared test fixtures: deterministic random inputs and the hypothesis profile."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("APPROXJAX_HYPOTHESIS_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("ci")


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


# The tests left out of the fast development subset (pytest -m "not slow"):
# those that took 9 s or more each on a 2-core machine (pytest --durations,
# full suite, 2026-12-02): whole sweeps and CLI runs in subprocesses,
# notebooks, multi-device subprocesses, and the largest property and
# reference sweeps. CI runs them all.
SLOW = {
    "test_lut_gradient_against_dense_numpy",
    "test_training_under_policies_and_vmap",
    "test_gemm_matches_reference",
    "test_any_arithmetic_any_dimension_numbers",
    "test_gradients_run_each_gemm_under_its_arithmetic",
    "test_convolution_under_an_arithmetic",
    "test_modules_and_policies_take_an_arithmetic",
    "test_against_reference",  # test_conv and test_dot_general: hypothesis sweeps
    "test_implicit_im2col_both_streams_and_weight_gradient",
    "test_exact_table_equals_xla_convolution",
    "test_streamed_operand_packed_once",
    "test_large_gemms_bit_exact_in_k_order",
    "test_long_contractions_sum_in_blocks",
    "test_gradients_follow_the_approximate_backward_rule",
    "test_gradients_are_bit_exact_sequential_gemms",
    "test_characterize_cli_and_plot",
    "test_sweep_formats_and_arithmetic_specs",
    "test_quantized_sweep_stacks_and_matches_single_runs",
    "test_init_params_are_evaluated_and_fine_tuned",
    "test_runner_trains_the_spiking_cnn",
    "test_runner_translator_sweep",
    "test_runner_detector_sweep",
    "test_runner_trains_a_resnet_on_an_image_folder",
    "test_sweep_end_to_end_and_resume",
    "test_new_run_refuses_a_folder_with_another_run",
    "test_resume_refuses_another_runs_checkpoints",
    "test_models_run_under_a_multiplier",
    "test_notebook_executes",
    "test_native_dot_general_within_bound",
    "test_operand_formats_natively",
    "test_native_convolution_and_its_gradients",
    "test_gradients_follow_the_lut_rules",
    "test_large_gemm_within_bound",
    "test_sweep_fast_mode_records_methods_and_residuals",
}
# Every test of these runs in or after a multi-device subprocess.
SLOW_MODULES = {"test_sharding.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name in SLOW or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
