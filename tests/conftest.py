"""Shared fixtures: a tiny random model, a temporary Foundry cache, the bundled model, a tiny sweep."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from slmops.toolkit.core import settings

#: The fast tier (``make test-fast``, ``pytest -m "not slow"``) leaves out every test that converts,
#: fine-tunes, registers or loads a real model, starts a cluster, a browser or a venv: those using
#: one of these fixtures, and the tests named below (measured over a second each with
#: ``pytest --durations=0``). ``make test`` runs both tiers.
HEAVY_FIXTURES = frozenset({
    "tiny_int4", "tiny_fp32", "tiny_pair", "tiny_adapter", "tiny_sweep", "bundled", "fp32_int4", "tied_model",
    "built", "jupyterlab", "two_nodes", "endpoint", "scripted", "other_model", "fuzz_model", "hostile", "wheel",
    "venv", "long_model",
})
HEAVY_TESTS = frozenset({
    "test_an_adapter_on_a_bin_base_is_checked_from_the_bin_and_merged",
    "test_an_adapter_with_added_tokens_is_merged_into_the_base_resized_first",
    "test_the_adapters_own_tokenizer_template_and_generation_config_win",
    "test_a_bin_model_is_read_weights_only_and_converts_without_a_crash",
    "test_cli_convert_register_ls_doctor", "test_cli_register_custom_file_and_rm",
    "test_no_address_starts_a_local_ray_with_this_machines_cpus",
    "test_a_conversion_that_would_not_fit_is_refused_before_anything_starts",
    "test_builder_route_converts_for_real", "test_builder_route_int4_equals_the_builders_own_int4",
    "test_fp16_builds_for_a_gpu_provider", "test_int8_is_8bit_weights_everywhere_and_int4_keeps_the_builders_layout",
    "test_manifest_estimates_fp32_size_without_a_sibling_build", "test_olive_routes_convert_for_real",
    "test_tied_table_is_stored_once_and_follows_fp32", "test_children_die_with_their_parent",
    "test_a_silent_worker_is_killed_at_its_idle_timeout",
    "test_a_conversion_killed_at_a_random_moment_keeps_the_earlier_build_and_its_children_die",
    "test_a_conversion_whose_disk_fills_while_writing_keeps_the_earlier_build",
    "test_a_registration_killed_at_any_point_keeps_the_earlier_one",
    "test_a_crashing_model_fails_its_edge_cases_and_the_checklist_goes_on", "test_bench_rows_and_files",
    "test_bench_sweeps_generation_lengths_and_threads", "test_checklist_on_a_random_model",
    "test_fp32_build_equals_transformers", "test_install_is_idempotent",
    "test_per_layer_rope_the_builder_cannot_build_is_refused_in_one_line",
    "test_the_check_fails_on_the_unpatched_builder", "test_the_olive_routes_build_them_exactly_through_the_parity_gate",
    "test_an_adapter_converts_merged_and_matches_the_merged_pytorch_model",
    "test_checkpoints_in_any_dtype_sharded_or_tied_convert", "test_finetune_trains_then_reuses",
    "test_two_processes_asking_for_one_fine_tune_at_once_train_it_once",
    "test_heldout_cases_are_scored_apart_and_the_base_is_a_control", "test_names_are_accepted_only_when_safe",
    "test_params_files_are_refused_with_the_parameter_named_or_fully_valid",
    "test_convert_register_chat_without_network", "test_a_build_is_kept_with_its_figures",
    "test_a_build_that_differs_from_its_source_is_refused", "test_a_failing_notebook_is_reported",
    "test_a_sweep_runs_each_set_and_compares_them",
    "test_mixed_plan_keeps_chosen_matmuls_at_8_bits_and_splits_the_value_out_of_qkv",
    "test_the_mixed_recipe_reaches_the_quantizer_through_convert", "test_chat_box_streams_keeps_history_and_resets",
    "test_doctor_finds_truncated_nested_and_unloadable_models", "test_reregister_updates_and_other_model_needs_force",
    "test_a_non_loopback_host_needs_a_key_and_the_key_is_checked",
    "test_bad_requests_get_json_errors_and_the_server_keeps_serving",
    "test_bench_endpoint_engine_measures_the_same_prompts", "test_sync_client_answers_with_usage_and_finish_reason",
    "test_a_chatml_fine_tune_with_endoftext_as_eos_stops_in_chat_endpoint_and_checklist",
    "test_a_model_that_never_stops_fails_doctor_and_the_checklist",
    "test_gemma_eos_vs_end_of_turn_stops_with_the_preset_and_counts_bos_once",
    "test_llama3_template_with_bos_and_strftime_now_registers_with_auto", "test_the_endpoint_answers_stop",
    "test_a_terse_fine_tune_is_benchmarked_over_the_asked_tokens",
    "test_the_checklist_sends_the_same_requests_and_gets_the_same_lengths_run_to_run",
    "test_int8_and_int4_quantize_the_runs_fp32_build_instead_of_exporting_again",
})


#: Modules that share an expensive session fixture, run on one worker: the bundled model with its
#: fine-tune (built in ``~/.slmops``, once) and the tiny sweep (a pipeline run). Each group takes
#: several minutes, so they run first, one on each worker (``--no-loadscope-reorder``).
SHARED_SCOPES = {"test_tool_calling": "bundled", "test_integration": "bundled",
                 "test_cluster": "tiny_sweep", "test_pipeline": "tiny_sweep"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the heavy tests ``slow`` (see :data:`HEAVY_FIXTURES`); the :data:`SHARED_SCOPES` modules go first."""
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.originalname in HEAVY_TESTS:
            item.add_marker(pytest.mark.slow)
    first = list(SHARED_SCOPES)
    items.sort(key=lambda item: first.index(item.path.stem) if item.path.stem in first else len(first))


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the machine's cores: torch in each (and in its children) computes on one thread,
    # since a thread waiting for a core the other worker holds stalls every operation (a fine-tune's
    # setup took 696 s on two threads, 263-304 s on one).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``make test`` (``-n 2 --dist loadscope --no-loadscope-reorder``): a module's tests on one worker, so
    its fixtures are built once, and the modules of :data:`SHARED_SCOPES` together.

    ``--dist loadgroup`` cannot do this on pytest 9: pytest-xdist 3.8 marks a group by setting a
    test's ``_nodeid``, which pytest 9 no longer reads.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = Path(nodeid.split("::", 1)[0]).stem
            return SHARED_SCOPES.get(module, module)

    return SharedScopes(config, log)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test talks to a temporary Foundry cache, never ~/.slmops/foundry."""
    cache = tmp_path_factory.mktemp("foundry-cache")
    os.environ["SLMOPS_CACHE_DIR"] = str(cache)
    settings.apply_offline_env()
    return cache


@pytest.fixture(scope="session")
def cache(_isolated_cache: Path) -> Path:
    return _isolated_cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmops.toolkit.domain.sources import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2")


@pytest.fixture(scope="session")
def tiny_int4(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmops.toolkit.stages.convert import ConvertSpec, Precision, convert

    out = tmp_path_factory.mktemp("converted") / "int4"
    return convert(ConvertSpec(tiny_model, out, Precision.INT4), progress=False).output_dir


@pytest.fixture(scope="session")
def bundled() -> Path:
    from slmops.toolkit.domain.sources import bundled_model

    return bundled_model()


#: A two-point sweep on the tiny model, as small as a whole pipeline run gets.
TINY_SWEEP = ("name_prefix: tinysweep\nprecisions: [int4]\ncompare_recipes: false\n"
              "checklist_requests: 0\nprompt_lengths: [16]\ngen_lengths: [4]\nrepeats: 1\nwarmup: 0\n"
              "sweep:\n  int4_block_size: [32, 64]\n")


@pytest.fixture(scope="session")
def tiny_sweep(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """``slmops run --params sweep.yaml --out DIR`` run serially: ``(params file, DIR, stdout, stderr)``."""
    from slmops.toolkit import cli

    work = tmp_path_factory.mktemp("sweep")
    params = work / "sweep.yaml"
    params.write_text(f"model_dir: {tiny_model}\n{TINY_SWEEP}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", "--params", str(params), "--out", str(work / "sweep")])
    assert code == 0, out.getvalue() + err.getvalue()
    return params, work / "sweep", out.getvalue(), err.getvalue()
