"""Train and inference engines: micro-batching, optimizer, LR schedule.

The torch backend (this package) runs in one process or under plain
torch.distributed data parallelism; a megatron-core backend is optional (GPU).
"""
