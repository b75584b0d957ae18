"""ResNet-50 image classification that survives spot interruptions, sample-exact.

The recipe of a ResNet-50/ImageNet spot plan (SGD with linear LR scaling, one-cycle or step
schedule with warm-up, label smoothing, gradient clipping, CutMix/MixUp, progressive
resizing, EMA, bf16 autocast on GPU), random init, synthetic class-structured images by
default. SIGTERM: the step in flight finishes, the checkpoint is committed (``step-N``),
exit 143; restarted with the same ``--checkpoint-dir`` it goes on at the next unseen
sample of the epoch (lines marked ``# spotrun``). Top-1/top-5 on the held-out split after
every epoch.

    PYTHONPATH=trainer python examples/resnet50/train.py --checkpoint-dir /tmp/ck
    PYTHONPATH=trainer torchrun --standalone --nproc-per-node 2 examples/resnet50/train.py
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import imagedata as D
import recipe as R
import torch
import torch.distributed as dist
from resnet import resnet
from torch import nn
from torch.utils.data import DataLoader

from spotrun_trainer.integrations.loop import SpotrunLoop  # spotrun
from spotrun_trainer.process_exit import run_main  # spotrun
from spotrun_trainer.state import seed_everything


def val_batches(
    data: D.Images, rank: int, world: int, res: int, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    ids = list(range(rank, len(data), world))
    for s in range(0, len(ids), batch):
        chunk = ids[s : s + batch]
        x = torch.stack([D.eval_view(data.image(i), res) for i in chunk])
        yield x, torch.tensor([data.label(i) for i in chunk])


def append_line(path: str, line: str) -> None:
    # One O_APPEND write per line: ranks sharing the file never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = R.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ddp = "RANK" in os.environ  # started by torchrun
    cuda = a.device.startswith("cuda")
    if ddp:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    amp, fmt = a.amp and cuda, torch.channels_last if cuda else torch.contiguous_format
    seed_everything(a.seed)  # the same random init on every rank
    train: D.Images
    val: D.Images
    if a.data_dir:
        train, val = (D.NpyImages(a.data_dir, s, a.num_classes) for s in ("train", "val"))
    else:
        train = D.SyntheticImages(a.train_samples, a.num_classes, a.image_size, a.seed, 0)
        val = D.SyntheticImages(a.val_samples, a.num_classes, a.image_size, a.seed, 1)
    net = resnet(a.depth, a.num_classes, a.width)
    if a.init_weights:  # a torchvision ResNet state dict loads as is
        net.load_state_dict(torch.load(a.init_weights, map_location="cpu", weights_only=True))
    net = net.to(device).to(memory_format=fmt)
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if ddp else net
    ema = None if a.no_ema else R.EMA(net, a.ema_decay)

    stages = R.resolution_stages(a)
    cursor = D.EpochCursor(len(train), a.batch_size, world, a.seed)
    cursor.stage, cursor.resolution = 0, stages[0]
    per_epoch = cursor.steps_per_epoch
    total = a.epochs * per_epoch
    lr = R.peak_lr(a, cursor.global_batch)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=a.momentum, weight_decay=a.weight_decay)
    sched = R.scheduler(a, opt, lr, total, per_epoch)
    shared = {"model": model, "optimizer": opt, "scheduler": sched, "data": cursor}
    spot = SpotrunLoop(  # spotrun: the data cursor and resize stage travel with the weights
        a.checkpoint_dir,
        shared={**shared, **({"ema": ema} if ema is not None else {})},
        interval_steps=a.save_steps,
        samples_per_step=cursor.global_batch,
    )
    step = spot.resume()  # spotrun
    if step != cursor.epoch * per_epoch + cursor.cursor // cursor.global_batch:
        raise RuntimeError(
            f"checkpoint step {step} disagrees with its data cursor {cursor.state_dict()}"
        )
    if rank == 0:
        print(f"world {world} global batch {cursor.global_batch} lr {lr:g} steps {total} "
              f"({per_epoch}/epoch); at step {step}: epoch {cursor.epoch} sample "
              f"{cursor.cursor} stage {cursor.stage} ({cursor.resolution} px)",
              flush=True)  # fmt: skip

    def report(tag: str) -> None:
        res = stages[-1]
        top1, top5 = R.evaluate(net, val_batches(val, rank, world, res, 64), device, amp)
        line = f"{tag} top1 {top1:.2f} top5 {top5:.2f}"
        if ema is not None:
            e1, e5 = R.evaluate(ema.model, val_batches(val, rank, world, res, 64), device, amp)
            line += f" ema_top1 {e1:.2f} ema_top5 {e5:.2f}"
        if rank == 0:
            print(line, flush=True)

    model.train()
    while step < total:
        epoch, res = cursor.epoch, cursor.resolution
        view = D.TrainEpoch(train, a.seed, epoch, res, a.scale_min)
        # Its own generator: a DataLoader draws a worker seed per iter(), which would move the
        # global torch RNG once more in an epoch cut by a stop than in one that was not.
        gen = torch.Generator().manual_seed(a.seed * 100_003 + epoch)
        loader = DataLoader(
            view, batch_sampler=cursor.remaining_batches(rank), num_workers=a.workers, generator=gen
        )
        for x, y, ids in loader:
            x, y = x.to(device, memory_format=fmt, non_blocking=True), y.to(device)
            key = [a.seed, epoch, cursor.cursor, rank]
            x, y2, lam = D.mix_batch(x, y, key, a.cutmix_prob, a.mixup_alpha)
            with torch.autocast("cuda", torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = R.cross_entropy_mixed(logits.float(), y, y2, lam, a.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if a.gradient_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), a.gradient_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(net)
            step += 1
            if a.sample_log:
                ids_text = ",".join(str(int(i)) for i in ids)
                append_line(a.sample_log, f"epoch {epoch} step {step} rank {rank} ids {ids_text}\n")
            if rank == 0 and (step % a.log_every == 0 or step == total):
                print(f"step {step} epoch {epoch} res {res} loss {loss.item():.4f} "
                      f"lr {sched.get_last_lr()[0]:.5f}", flush=True)  # fmt: skip
            if cursor.advance():  # the epoch's last step: evaluate, then the next stage
                report(f"epoch {epoch}")
                nxt = R.stage_of(epoch + 1, a.epochs, len(stages))
                cursor.next_epoch(nxt, stages[nxt])
            spot.step_end(step)  # spotrun: saves when due; SIGTERM: save, exit 143
    report("final")
    spot.finish(total)  # spotrun
    print(f"done: {total} steps", flush=True)
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)  # spotrun: exit without interpreter finalization
