"""Quick start: build a paper network, run it, re-discretize it, take one training step."""

import torch

import neuralpde

torch.manual_seed(0)

# The CIFAR-10 network of the paper's Table 1, Hamiltonian dynamics.
net = neuralpde.PDECNN.from_paper("cifar10", "hamiltonian")
print(neuralpde.count_parameters(net))  # 264106, as in Table 1

x = torch.randn(2, 3, 32, 32)  # (batch, channels, height, width)
logits = net(x)  # (batch, num_classes) = (2, 10)
print(logits.shape, net.solver_stats()[0])

# Same weights, another discretization of the same ODE: twice as many Verlet steps.
net.set_solver("verlet", step_size=0.5)
print(net(x).shape, net.solver_stats()[0])
net.reset_solver()  # back to the paper's symplectic Euler with h = 1

# One step of the paper's optimizer (SGD, momentum 0.9).
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
labels = torch.randint(0, 10, (2,))
loss = torch.nn.functional.cross_entropy(net(x), labels)
opt.zero_grad()
loss.backward()
opt.step()
print(f"loss {loss.item():.3f}")
