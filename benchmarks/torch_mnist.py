"""The paper's small MNIST CNN recipe in PyTorch, for comparison only.

Spinal head 6 x 8 on the two channel halves of the 320 flattened features
(conv 1->10 k5, maxpool, ReLU; conv 10->20 k5, Dropout2d 0.5, maxpool, ReLU),
SGD lr 0.01 momentum 0.5, batch 64, inputs normalised with 0.1307/0.3081,
as in the authors' script. Reads the original IDX files. Not part of the
package; used by epoch_bench.py.

    python benchmarks/torch_mnist.py ../shared/data/mnist --epochs 1
"""

import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


class SpinalCNN(nn.Module):
    def __init__(self, half=160, width=8, depth=6, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.drop = nn.Dropout2d(0.5)
        self.half = half
        self.fcs = nn.ModuleList(
            [nn.Linear(half, width)] + [nn.Linear(half + width, width) for _ in range(depth - 1)])
        self.out = nn.Linear(width * depth, classes)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        parts = (x[:, :self.half], x[:, self.half:])
        outs, prev = [], None
        for i, fc in enumerate(self.fcs):
            z = parts[i % 2] if prev is None else torch.cat([parts[i % 2], prev], 1)
            prev = F.relu(fc(z))
            outs.append(prev)
        return F.log_softmax(self.out(torch.cat(outs, 1)), dim=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mnist_dir")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    def load(prefix):
        x = idx(os.path.join(args.mnist_dir, f"{prefix}-images-idx3-ubyte.gz"))
        y = idx(os.path.join(args.mnist_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        x = (torch.from_numpy(x.astype(np.float32) / 255.0) - 0.1307) / 0.3081
        return x.unsqueeze(1), torch.from_numpy(y.astype(np.int64))

    x, y = load("train")
    xt, yt = load("t10k")
    model = SpinalCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx_ = order[i:i + 64]
            opt.zero_grad()
            loss = F.nll_loss(model(x[idx_]), y[idx_])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum().item()
                      for i in range(0, len(xt), 1000)) / len(xt)
    seconds = time.perf_counter() - start
    print(json.dumps({"epochs": args.epochs, "train_and_test_seconds": seconds,
                      "test_accuracy": acc, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
