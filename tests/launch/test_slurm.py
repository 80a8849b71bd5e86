"""launch/slurm/train.sbatch against a real Slurm: a one-node cluster on this machine (Debian's
slurm-wlm and munge; munged, slurmctld and slurmd with their state, ports and socket of their own in
a temporary folder) runs the template in a throwaway copy of the repository, for the sample's nano
variants on 2 CPU ranks. A job cancelled mid-epoch (scancel) resumes when submitted again.

Without the Slurm binaries the test is skipped, except in CI (`CI` set), where `make test` installs
them and the test must run.
"""
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import commit, copy_repo, shrink

BINARIES = ('munged', 'mungekey', 'slurmctld', 'slurmd', 'sbatch', 'scancel', 'squeue', 'sinfo', 'scontrol', 'srun')
SEARCH_PATH = os.pathsep.join([os.environ.get('PATH', ''), '/usr/sbin', '/sbin'])
SLURM_CONF = """\
ClusterName=sgformer-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=10
NodeName=localhost CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f'{what}: not within {timeout} s'
        time.sleep(interval)
    return found


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    """A running one-node Slurm cluster; yields the environment its commands need (SLURM_CONF)."""
    missing = [b for b in BINARIES if shutil.which(b, path=SEARCH_PATH) is None]
    if missing:
        reason = f'Slurm is not installed ({", ".join(missing)} missing): `make test` installs slurm-wlm and munge'
        if os.environ.get('CI'):
            pytest.fail(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp('slurm')
    for folder in ('munge', 'state', 'spool'):
        (root / folder).mkdir(mode=0o700)
    conf = root / 'slurm.conf'
    conf.write_text(SLURM_CONF.format(root=root, ctld_port=free_port(), slurmd_port=free_port(), cpus=os.cpu_count()))
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=SEARCH_PATH)
    run = lambda *cmd: subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=60)  # noqa: E731
    run('mungekey', '--create', f'--keyfile={root}/munge/key')
    munge = root / 'munge'
    daemons = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for cmd in (
        ['munged', '--foreground', '--force', f'--key-file={munge}/key', f'--socket={munge}/socket',
         f'--pid-file={munge}/pid', f'--log-file={munge}/log', f'--seed-file={munge}/seed'],)]
    try:
        wait_until(lambda: (munge / 'socket').exists(), 30, 'munged')
        for cmd in (['slurmctld', '-D', '-f', str(conf)], ['slurmd', '-D', '-N', 'localhost', '-f', str(conf)]):
            daemons.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_until(lambda: subprocess.run(['sinfo', '-h', '-o', '%T'], env=env, capture_output=True, text=True)
                   .stdout.strip() == 'idle', 90, 'the node to be idle')
        yield env
    finally:
        subprocess.run(['scancel', '--full', '--partition=debug'], env=env, capture_output=True)
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def dvc(repo: Path, *args: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, '-m', 'dvc', *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


@pytest.fixture(scope='module')
def repo(slurm, tmp_path_factory):
    """A copy of the repository whose data stages ran: 2 ranks, nano for 1 epoch, nano_dp for 2."""
    repo = tmp_path_factory.mktemp('repo')
    copy_repo(repo)
    params = shrink(yaml.safe_load((repo / 'params.yaml').read_text()))
    params['sample'].update(train_per_class=12, val_per_class=4)  # 36 readable: 4 steps of 8 per epoch
    params['train'].update(world_size=2, epochs=2)
    params['tracking'].update(log_every_steps=1)
    params['variants']['nano']['epochs'] = 1
    (repo / 'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo, 'repro', 'convert', env=slurm)
    commit(repo, 'data')
    return repo


def sbatch(repo: Path, env: dict, variant: str, *options: str) -> list[str]:
    """The template's submission on the test cluster: one node, no GPUs, 2 CPU ranks."""
    return ['sbatch', '--nodes=1', '--gpus-per-node=0', f'--cpus-per-task={os.cpu_count()}',
            f'--export=ALL,VARIANT={variant},NPROC_PER_NODE=2,RDZV_PORT={free_port()}',
            f'--output={repo}/slurm-{variant}-%j.out', *options, 'launch/slurm/train.sbatch']


def job_output(repo: Path, variant: str, job: str) -> str:
    return (repo / f'slurm-{variant}-{job}.out').read_text()


def runs_named(repo: Path, name: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    experiment = client.get_experiment_by_name('sgformer')
    return client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")


def submitted(proc: subprocess.CompletedProcess) -> str:
    match = re.search(r'Submitted batch job (\d+)', proc.stdout)
    assert match, proc.stdout + proc.stderr
    return match[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_sbatch_template_trains_records_and_evaluates(repo, slurm):
    proc = subprocess.run(sbatch(repo, slurm, 'nano', '--wait'), cwd=repo, env=slurm, capture_output=True, text=True,
                          timeout=1200)
    output = job_output(repo, 'nano', submitted(proc))
    assert proc.returncode == 0, output[-5000:]
    assert 'Traceback' not in output, output[-5000:]
    (run,) = runs_named(repo, 'nano')
    assert run.info.status == 'FINISHED' and run.data.tags['world_size'] == '2'
    assert {'val/ema_top1', 'eval/top1'} <= set(run.data.metrics)  # the train stage, then evaluate@nano
    card = json.loads((repo / 'models' / 'nano' / 'card.json').read_text())
    assert card['mlflow_run_id'] == run.info.run_id
    with open(repo / 'plots' / 'train' / 'nano.tsv') as f:
        assert 'val_ema_top1' in csv.DictReader(f, delimiter='\t').fieldnames
    assert {'top1', 'gpu_hours'} <= set(json.loads((repo / 'metrics' / 'nano.json').read_text()))
    assert json.loads(dvc(repo, 'status', '--json', 'evaluate@nano', env=slurm)) == {}  # recorded, up to date


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_job_cancelled_mid_epoch_resumes_into_the_same_mlflow_run_when_resubmitted(repo, slurm):
    proc = subprocess.run(sbatch(repo, slurm, 'nano_dp'), cwd=repo, env=slurm, capture_output=True, text=True,
                          timeout=60)
    job = submitted(proc)

    def logged_epoch_1():  # train/loss of step 5 (epoch 1 is steps 5 to 8) in rank 0's tracking queue
        return any('"train/loss"' in line and '"step": 5,' in line
                   for queue in (repo / '.mlflow-offline').glob('*nano_dp*/queue.jsonl')
                   for line in queue.read_text().splitlines())
    wait_until(logged_epoch_1, 900, 'epoch 1 of nano_dp', interval=0.05)
    subprocess.run(['scancel', job], env=slurm, check=True, timeout=60)
    wait_until(lambda: not subprocess.run(['squeue', '-h', '-j', job], env=slurm, capture_output=True,
                                          text=True).stdout.strip(), 120, 'the cancelled job to end')
    (run,) = runs_named(repo, 'nano_dp')
    assert not (repo / 'models' / 'nano_dp').exists()
    (folder,) = (repo / 'checkpoints' / 'nano_dp').iterdir()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith('step-')) == ['step-4']

    proc = subprocess.run(sbatch(repo, slurm, 'nano_dp', '--wait'), cwd=repo, env=slurm, capture_output=True,
                          text=True, timeout=1200)
    output = job_output(repo, 'nano_dp', submitted(proc))
    assert proc.returncode == 0, output[-5000:]
    assert f'resuming {Path("checkpoints") / "nano_dp" / folder.name} at step 4 (epoch 1 of 2)' in output, output[-5000:]
    (resumed,) = runs_named(repo, 'nano_dp')
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == 'FINISHED'
    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{repo}/mlflow.db')
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'val/ema_top1')] == [0, 1]
    assert 'eval/top1' in resumed.data.metrics
    assert not list(folder.glob('*.tmp')) and not list((repo / 'models').glob('.nano_dp.*'))
    assert not list((repo / '.mlflow-offline').glob('*/queue.jsonl'))  # the cancelled job's queue was replayed
