"""System metrics (`system/...`: CPU, memory, disk, network, GPU) sampled in a thread and handed
to a logging function at the current training step.

The sampling is MLflow's: its CPU, disk, network and GPU monitors (GPUs through nvidia-ml-py, or
pyrsmi for AMD), read every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (10) seconds. MLflow's
`SystemMetricsMonitor` thread is not used, as it cannot keep a tracked run's guarantee that an
outage loses nothing: it logs through a client of its own straight to the run (not through our
queue on disk), needs a run that exists when it starts (a run offline from the start has none),
stops for good at the first sample where the server does not answer `get_run`, and counts its own
steps (0, 1, 2, ...) instead of the training step. Redirecting it would mean overriding both its
loop and its publishing, all that the class does besides listing the monitors.
"""
import os
import threading
from collections.abc import Callable

__all__ = ['SystemMetrics']


class SystemMetrics(threading.Thread):
    """Samples MLflow's system monitors every interval and calls `log` with the sample.

    Args:
        log: called with `({'system/<name>': value, ...}, step)` for each sample (the tracker's
            `log_metrics`, so that the sample goes through the queue on disk like any metric).
        step: gives the current training step, at which a sample is logged.
    """

    def __init__(self, log: Callable[[dict[str, float], int], None], step: Callable[[], int]):
        super().__init__(daemon=True, name='sgformer-system-metrics')
        self.log, self.step, self.monitors = log, step, _system_monitors()
        self.interval = float(os.environ.get('MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL') or 10)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                metrics = self._sample()
            except Exception:  # a monitor that fails (psutil, NVML) costs this sample, never the run
                continue
            self.log({f'system/{k}': v for k, v in metrics.items()}, self.step())

    def _sample(self) -> dict[str, float]:
        metrics = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            metrics.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        return metrics

    def stop(self) -> None:
        """Stop sampling; waits (at most 5 s) for a sample being logged."""
        self._stop_event.set()
        self.join(5)


def _system_monitors() -> list:
    """MLflow's CPU (with memory), disk and network monitors, and its GPU monitor when one starts."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor
    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu_monitor in (GPUMonitor, ROCMMonitor):
        try:  # no GPU, no driver or no nvidia-ml-py: no GPU metrics
            monitors.append(gpu_monitor())
            break
        except Exception:
            continue
    return monitors
