"""What the benchmark generates into the docs stays in step with its stored results: each
model's tables in docs/benchmark.md are its results.md, the README's results summary is the
verdicts of every stored results.json, and each run has its trade-off plot."""

from tools.benchmark.guidance_benchmark import BENCHMARK_PAGE, page_markers
from tools.benchmark.report import SUMMARY_MARKERS, summary_table
from tools.paths import BENCHMARK_RESULTS, README

RUNS = sorted(p.parent for p in BENCHMARK_RESULTS.glob("*/results.json"))


def between(text: str, markers: tuple) -> str:
    start, end = text.index(markers[0]) + len(markers[0]), text.index(markers[1])
    return text[start:end].strip()


def test_there_are_stored_runs():
    assert len(RUNS) >= 2


def test_benchmark_page_holds_each_models_results_md():
    page = BENCHMARK_PAGE.read_text()
    for run in RUNS:
        results = (run / "results.md").read_text()
        table = results.split("\n\n", 2)[2].strip()  # after the title and the command line
        assert between(page, page_markers(run.name)) == table, (
            f"docs/benchmark.md is stale for {run.name}: run "
            f"`.host/venv/bin/python -m tools.benchmark.guidance_benchmark --regenerate --weights {run.name}.safetensors`")
        assert (run / "tradeoff.png").is_file()


def test_readme_results_summary_is_generated_from_the_stored_results():
    assert between(README.read_text(), SUMMARY_MARKERS) == summary_table(BENCHMARK_RESULTS).strip(), (
        "README results summary is stale: run `.host/venv/bin/python -m tools.benchmark.guidance_benchmark --regenerate`")


def test_full_size_tables_are_generated_from_the_stored_runs():
    """docs/performance.md holds each stored full-size run's table, the README their summary."""
    from tools.benchmark import full_size

    page = full_size.PERFORMANCE_PAGE.read_text()
    runs = full_size.stored_runs()
    for stem, data in runs.items():
        markers = tuple(m.format(stem) for m in full_size.PAGE_MARKERS)
        assert between(page, markers) == full_size.markdown(data).strip(), (
            f"docs/performance.md is stale for {stem}: run `.host/venv/bin/python -m tools.benchmark.full_size "
            f"--regenerate --out docs/benchmark/full_size/{stem}.json`")
    assert between(README.read_text(), full_size.README_MARKERS) == full_size.summary_table().strip(), (
        "README full-size summary is stale: run `.host/venv/bin/python -m tools.benchmark.full_size --regenerate`")
