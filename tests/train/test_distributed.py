"""What a rank says when a collective fails because another rank is gone or hung (the messages gloo
raises, as torch 2.14 words them); tests/pipeline/test_train.py runs the real thing."""
import torch.distributed as dist

from sgformer.train.distributed import peer_lost

GLOO = '[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/'


def test_a_timeout_and_a_closed_connection_become_one_line_and_other_errors_pass():
    timeout = RuntimeError(GLOO + 'unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation to complete')
    assert str(peer_lost(timeout, rank=0, timeout_s=20)) == (
        'rank 0: the other ranks did not answer within runtime.collective_timeout_s = 20 s (a rank is hung or dead); '
        'stopping')
    reset = RuntimeError(GLOO + 'pair.cc:545] Read error [127.0.0.1]:13207: Connection reset by peer. This is '
                         'typically caused by a remote worker hanging or bugs in the application.')
    assert str(peer_lost(reset, rank=1, timeout_s=20)) == \
        'rank 1: lost another rank (Read error [127.0.0.1]:13207: Connection reset by peer); stopping'
    assert str(peer_lost(dist.DistNetworkError('store gone'), rank=1, timeout_s=20)) == \
        'rank 1: lost another rank (store gone); stopping'
    assert peer_lost(RuntimeError('CUDA out of memory'), rank=0, timeout_s=20) is None
