"""The authors' side of ``compare_fit_with_authors_script.py``, run by an interpreter that has
torchvision (their ``dataset.py`` needs it; ``.venv-anomalib`` has it): their code, from their
checkout, end to end. Nothing here is minimaxad's.

    python authors_script_side.py encoder AUTHORS_CODE VARIANT SEED OUT.pt
    python authors_script_side.py inputs AUTHORS_CODE DATA SIZE OUT.pt
    python authors_script_side.py train AUTHORS_CODE DATA VARIANT SEED ENCODER.pt SIZE EPOCHS BATCH OUT.json

``train`` is their single-class ADC script (``train_single_GoodsAD.py``'s ``train()``) with the
settings of the comparison: their ``setup_seed``, ``loss_adc`` and ``cal_anomaly_map_tensor`` read
out of the script and executed as they are, their ``get_data_transforms``, ``ImageFolder`` over
``train/`` and ``MVTecDataset`` over the category, ``DataLoader(shuffle=True)`` (no worker
processes: the same draws from the global generator), their encoder, bottleneck and decoder built
in their order after the seed, the encoder's weights from ``ENCODER.pt`` (``strict=False``), AdamW
and ExponentialLR as in the script, and their ``evaluation_batch(max_ratio=0.01)``.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time


def _authors(code: str) -> None:
    """Their repository on the path, their model files importable without timm."""
    sys.path.insert(0, code)
    sys.path.insert(0, os.path.join(code, "..", "tools"))  # ../shared/tools/authors_shim.py
    try:
        import authors_shim

        authors_shim.install()
    except ImportError:
        pass  # timm installed: their imports work as they are


def _constructors(variant: str):
    import models.de_unireplknet as de
    import models.unireplknet as en

    return getattr(en, f"unireplknet_{variant}"), getattr(de, f"de_unireplknet_{variant}")


def encoder(code: str, variant: str, seed: str, out: str) -> None:
    """Their encoder as their script builds it right after ``setup_seed(seed)``: the random encoder
    both codes are given (no ImageNet weights here)."""
    import torch

    _authors(code)
    torch.manual_seed(int(seed))
    build_encoder, _ = _constructors(variant)
    enc, _ = build_encoder()
    torch.save(enc.state_dict(), out)


def inputs(code: str, data: str, size: str, out: str) -> None:
    """Every training and test tensor their pipeline makes of ``data`` (and the binarised masks),
    keyed by ``('train' | 'test', '<defect>/<file name>')``."""
    import torch

    _authors(code)
    from dataset import ImageFolder, MVTecDataset, get_data_transforms

    image_t, mask_t = get_data_transforms(int(size), int(size))
    result = {}
    train = ImageFolder(root=os.path.join(data, "train"), transform=image_t)
    for i, (path, _) in enumerate(train.samples):
        key = os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)
        result[("train", key)] = (train[i][0], None)
    test = MVTecDataset(root=data, transform=image_t, gt_transform=mask_t, phase="test")
    for i, path in enumerate(test.img_paths):
        image, gt, _, kind = test[i]
        gt = gt.clone()
        gt[gt > 0.5] = 1  # as their evaluation_batch binarises
        gt[gt <= 0.5] = 0
        if gt.shape[0] > 1:
            gt = gt.max(0, keepdim=True)[0]
        result[("test", f"{kind}/{os.path.basename(path)}")] = (image, gt)
    torch.save(result, out)


def _script_functions(code: str) -> dict:
    """``setup_seed``, ``loss_adc`` and ``cal_anomaly_map_tensor`` of their single-class ADC script."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    script = os.path.join(code, "train_single_GoodsAD.py")
    tree = ast.parse(open(script).read())
    wanted = {"setup_seed", "loss_adc", "cal_anomaly_map_tensor"}
    scope = {"torch": torch, "F": F, "np": np, "random": __import__("random")}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in wanted:
            exec(compile(ast.Module([node], []), script, "exec"), scope)
    return scope


def train(code, data, variant, seed, encoder_file, size, epochs, batch, out) -> None:
    import torch

    _authors(code)
    import pandas as pd
    from dataset import ImageFolder, MVTecDataset, get_data_transforms
    from utils.eval import evaluation_batch

    if not hasattr(pd.DataFrame, "_append"):  # pandas 3 dropped it; their compute_pro calls it
        pd.DataFrame._append = lambda self, row, ignore_index=True: pd.concat(
            [self, pd.DataFrame([row])], ignore_index=True
        )
    fn = _script_functions(code)
    seed, size, epochs, batch = int(seed), int(size), int(epochs), int(batch)
    fn["setup_seed"](seed)
    learning_rate, p_hard, p_lim = 5e-3, 0.9999, 0.9995
    num_lim = size * size * batch * (1 - p_lim)
    image_t, mask_t = get_data_transforms(size, size)
    train_data = ImageFolder(root=os.path.join(data, "train"), transform=image_t)
    test_data = MVTecDataset(root=data, transform=image_t, gt_transform=mask_t, phase="test")
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=batch, shuffle=True, num_workers=0)
    test_loader = torch.utils.data.DataLoader(test_data, batch_size=1, shuffle=False, num_workers=0)
    build_encoder, build_decoder = _constructors(variant)
    enc, bn = build_encoder()
    dec = build_decoder()
    enc.load_state_dict(torch.load(encoder_file, map_location="cpu"), strict=False)
    enc.eval()
    optimizer = torch.optim.AdamW(
        list(dec.parameters()) + list(bn.parameters()), lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-5
    )
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.995)
    start = time.time()
    for _ in range(epochs):
        bn.train()
        dec.train()
        for img, _label in train_loader:
            inputs_ = enc(img)
            outputs = dec(bn(inputs_))
            loss = fn["loss_adc"](inputs_, outputs, p_hard, p_lim, num_lim, size)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    seconds = time.time() - start
    results = evaluation_batch(enc, bn, dec, test_loader, "cpu", max_ratio=0.01)
    names = ["i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro_200"]
    record = {k: float(v) for k, v in zip(names, results)}
    record["train_seconds"] = seconds
    with open(out, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"encoder": encoder, "inputs": inputs, "train": train}[command](*args)
