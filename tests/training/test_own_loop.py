"""A model defined here, trained with rp.GloRoNet in a hand-written PyTorch loop, certifies as
well as ``relaxplug train`` on the equivalent registered architecture with the same config."""

import torch
from torch import nn
from torch.utils.data import DataLoader

import relaxplug as rp
from relaxplug.data import load_dataset
from relaxplug.training.config import TrainConfig
from relaxplug.training.trainer import train

EPOCHS, EPS, LR, LAMBDA, BATCH = 12, 0.3, 3e-3, 1.0, 64


def user_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), rp.layers.MinMax(), nn.Linear(128, 128), rp.layers.MinMax(),
                         nn.Linear(128, 10))


def _test_split():
    data = load_dataset("digits")
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.tensor([int(data.test[i][1]) for i in range(len(data.test))])
    return data, x, y


def test_hand_written_loop_matches_relaxplug_train(tmp_path):
    config = TrainConfig(name="eq", dataset="digits", architecture="mlp", guarantee="standard", eps=EPS, epochs=EPOCHS,
                         batch_size=BATCH, lr=str(LR), device="cpu", out_dir=str(tmp_path / "cli"),
                         method_options={"loss": "trades", "trades_lambda": str(LAMBDA)})
    registered = train(config, resume=False, progress=False).model

    # the user's loop: plain PyTorch, same seed
    torch.manual_seed(0)
    shuffle = torch.Generator().manual_seed(0)
    data, x_test, y_test = _test_split()
    model = user_model()
    net = rp.GloRoNet(model, EPS, "standard", input_shape=(1, 8, 8), loss="trades", trades_lambda=LAMBDA)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    loader = DataLoader(data.train, batch_size=BATCH, shuffle=True, generator=shuffle)
    net.train()
    for _ in range(EPOCHS):
        for x, y in loader:
            optimizer.zero_grad()
            net.loss(x, y).backward()
            optimizer.step()

    ours = net.certify(x_test).vra(y_test)
    theirs = rp.certify(registered, x_test, EPS, 2, "gloro", "standard").vra(y_test)
    assert ours > 0.3, ours  # a trained model, not two untrained ones agreeing
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    print(f"VRA hand-written loop {ours:.4f}, relaxplug train {theirs:.4f}")
