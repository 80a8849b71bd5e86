"""The system metrics sampler hands each sample to the logging function it is given, at the step
its step function gives (the tracker passes its `log_metrics` and its last training step), and a
monitor that fails costs a sample, never the sampler."""
import queue

from sgformer.tracking.system_metrics import SystemMetrics


class _FailsOnce:
    """A monitor whose first reading fails (a GPU driver that hiccups), then reads 1.0."""

    def __init__(self):
        self.calls = 0

    def collect_metrics(self):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError('NVML: driver not loaded')

    def aggregate_metrics(self):
        return {'flaky': 1.0}

    def clear_metrics(self):
        pass


def _sampled(monkeypatch, step, monitors=None) -> tuple[dict[str, float], int]:
    """The first sample the sampler logs, every 0.05 s."""
    monkeypatch.setenv('MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL', '0.05')
    logged = queue.SimpleQueue()
    sampler = SystemMetrics(lambda metrics, at: logged.put((metrics, at)), step)
    if monitors is not None:
        sampler.monitors = monitors
    sampler.start()
    try:
        return logged.get(timeout=30)
    finally:
        sampler.stop()
        assert not sampler.is_alive()


def test_samples_are_logged_as_system_metrics_at_the_current_step(monkeypatch):
    metrics, step = _sampled(monkeypatch, step=lambda: 7)
    assert step == 7
    assert 'system/cpu_utilization_percentage' in metrics and 'system/system_memory_usage_megabytes' in metrics
    assert all(name.startswith('system/') for name in metrics)


def test_a_failing_monitor_costs_one_sample(monkeypatch):
    flaky = _FailsOnce()
    metrics, _ = _sampled(monkeypatch, step=lambda: 0, monitors=[flaky])
    assert metrics == {'system/flaky': 1.0} and flaky.calls >= 2  # the first reading failed, the sampler went on
