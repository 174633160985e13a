"""The Brownian bridge between a SAR image x0 and its optical partner y (BBDM), with a skip-step sampler.

Schedule (index t = 0 .. T-1 into float32 buffers, as BBDM does):
    m_t     = linspace(m_min, m_max, T)[t]          (m[0] = m_min, m[T-1] = m_max)
    delta_t = 2 * max_var * (m_t - m_t**2)           (0 at m = 0 and 1, largest, max_var / 2, at m = 1/2)
    q(x_t | x0, y) = N((1 - m_t) x0 + m_t y, delta_t I)

Index 0 is one step away from the data x0 and index T-1 one step away from the condition y: with the default
m_max = 0.999, x_{T-1} = 0.001 x0 + 0.999 y + sqrt(0.002) noise. The sampler treats T-1 as the y endpoint and
starts exactly at x = y there (as BBDM does), then walks down to index 0 and returns the network's x0 estimate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ShipReIDError

OBJECTIVES = ("grad", "noise", "ysubx")
LOSSES = ("l1", "l2")
# Images live in [-1, 1]; the sampler clips its x0 estimates to this range.
DATA_RANGE = (-1.0, 1.0)


Generators = torch.Generator | list[torch.Generator] | None


def _gaussian(shape: torch.Size, like: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise on `like`'s device, drawn on the generator's device so a CPU generator also
    drives CUDA sampling reproducibly. A list holds one generator per sample (row), drawn in row order, so a
    sample's noise does not depend on the other rows of the batch."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([_gaussian(shape[1:], like, g) for g in generator])
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """Bridge arithmetic runs in float32 at least (float64 inputs stay float64), also under bf16 autocast."""
    return torch.promote_types(x.dtype, torch.float32)


class BrownianBridge(nn.Module):
    """The bridge schedule, training objective and sampler; holds no learnable parameters.

    objective: what the network predicts from (x_t, t, y):
        "grad"  : m_t (y - x0) + sqrt(delta_t) eps   (= x_t - x0; BBDM's default)
        "noise" : eps
        "ysubx" : y - x0
    loss: "l1" (BBDM's default) or "l2", averaged over all elements.
    """

    def __init__(self, num_timesteps: int = 1000, m_min: float = 0.001, m_max: float = 0.999, max_var: float = 1.0,
                 objective: str = "grad", loss: str = "l1"):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ShipReIDError(f"BBDM objective must be one of {OBJECTIVES}, got {objective!r}")
        if loss not in LOSSES:
            raise ShipReIDError(f"BBDM loss must be one of {LOSSES}, got {loss!r}")
        if num_timesteps < 2:
            raise ShipReIDError(f"num_timesteps must be at least 2, got {num_timesteps}")
        if not 0.0 < m_min < m_max < 1.0:
            raise ShipReIDError(f"need 0 < m_min < m_max < 1 so every delta_t is positive; got {m_min}, {m_max}")
        if max_var <= 0:
            raise ShipReIDError(f"max_var must be positive, got {max_var}")
        self.num_timesteps, self.objective, self.loss_type = num_timesteps, objective, loss
        self.m_min, self.m_max, self.max_var = m_min, m_max, max_var
        m = torch.linspace(m_min, m_max, num_timesteps, dtype=torch.float64)
        delta = 2.0 * max_var * (m - m ** 2)
        # Derived from the constructor arguments, so not saved in checkpoints; float32 even if the module is cast.
        self.register_buffer("m", m.float(), persistent=False)
        self.register_buffer("delta", delta.float(), persistent=False)

    def _apply(self, fn, recurse=True):
        """Follow .to(device) but keep the exact float32 schedule when the module is cast (e.g. .bfloat16())."""
        m, delta = self.m, self.delta
        super()._apply(fn, recurse)
        self.m, self.delta = m.to(self.m.device), delta.to(self.delta.device)
        return self

    def _coef(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, ...) to broadcast against `like`, in the working dtype."""
        picked = values.to(like.device)[t.to(like.device).long()]
        return picked.to(_work_dtype(like)).reshape(-1, *([1] * (like.dim() - 1)))

    def marginal(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (1 - m_t) x0 + m_t y and variance delta_t (broadcastable, per sample) of q(x_t | x0, y)."""
        m_t, delta_t = self._coef(self.m, t, x0), self._coef(self.delta, t, x0)
        return (1.0 - m_t) * x0 + m_t * y, delta_t

    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_t ~ q(x_t | x0, y) with the given (or fresh) standard-normal noise; returns (x_t, target)."""
        if noise is None:
            noise = _gaussian(x0.shape, x0, None)
        m_t, delta_t = self._coef(self.m, t, x0), self._coef(self.delta, t, x0)
        scaled_noise = delta_t.sqrt() * noise
        x_t = (1.0 - m_t) * x0 + m_t * y + scaled_noise
        if self.objective == "grad":
            target = m_t * (y - x0) + scaled_noise
        elif self.objective == "noise":
            target = noise.to(x_t.dtype)
        else:
            target = y - x0
        return x_t, target

    def predict_x0(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        """Invert the objective: the x0 that, with this x_t and y, makes model_out the exact target."""
        out = model_out.to(_work_dtype(x_t))
        if self.objective == "grad":
            return x_t - out
        if self.objective == "ysubx":
            return y - out
        m_t, delta_t = self._coef(self.m, t, x_t), self._coef(self.delta, t, x_t)
        return (x_t - m_t * y - delta_t.sqrt() * out) / (1.0 - m_t)

    def training_loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The BBDM loss for one batch: t uniform over 0..T-1, x_t from q, |model(x_t, t, y) - target|."""
        if x0.shape != y.shape:
            raise ShipReIDError(f"x0 {tuple(x0.shape)} and y {tuple(y.shape)} must have the same shape (paired images)")
        t_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device=t_device).to(x0.device)
        x_t, target = self.q_sample(x0, y, t, _gaussian(x0.shape, x0, generator))
        out = model(x_t, t, y).float()
        target = target.float()
        return F.l1_loss(out, target) if self.loss_type == "l1" else F.mse_loss(out, target)

    def sample_timesteps(self, steps: int) -> list[int]:
        """The `steps` timesteps the sampler visits, T-1 first and 0 last (one network evaluation each).

        BBDM's "linear" skip schedule: T-1, T-1 - h, T-1 - 2h, ... while above 1, each truncated to an integer,
        then 1 and 0, with h = (T-1) / (steps - 2); that is `steps` timesteps for 3 <= steps < T. The points
        are computed as the reference computes them (a float32 arange on the CPU, its default dtype), since a
        point whose exact value is an integer can truncate one lower in other arithmetic: for T = 1000 and 200
        steps the 67th point, exactly 666, is 666.0 in float32 and 665.999... in float64. Above steps =
        (T + 3) / 2, h < 2 and the last arange point truncates to 1, so t = 1 comes twice, as in the reference
        (the repeated jump 1 -> 1 leaves x as it is). Cases the reference does not cover: steps = T visits
        every timestep, steps = 2 is T-1 then 0, steps = 1 is T-1 alone (the one-step x0 estimate from y)."""
        T = self.num_timesteps
        if not 1 <= steps <= T:
            raise ShipReIDError(f"sampling steps (BBDM.SAMPLE_STEPS) must be in 1..{T} (BBDM.NUM_TIMESTEPS), "
                                f"got {steps}")
        if steps == T:
            return list(range(T - 1, -1, -1))
        if steps <= 2:
            return [T - 1, 0][:steps]
        points = torch.arange(T - 1, 1, step=-((T - 1) / (steps - 2)), dtype=torch.float32, device="cpu")
        return points.long().tolist() + [1, 0]

    @torch.no_grad()
    def sample(self, model: nn.Module, y: torch.Tensor, steps: int = 200, eta: float = 1.0,
               generator: Generators = None, clip: bool = True) -> torch.Tensor:
        """x0 samples for conditions y: start at x = y at t = T-1, then jump t -> s along `sample_timesteps`.

        With x0_hat the network's x0 estimate at t (clipped to [-1, 1] when `clip`) and mu_k = (1 - m_k) x0_hat
        + m_k y the bridge mean at index k, each jump draws, as the BBDM reference does,
            x_s = mu_s + sqrt((delta_s - sigma^2) / delta_t) (x_t - mu_t) + eta sigma z,    z ~ N(0, I),
            sigma^2 = delta_s delta_{t|s} / delta_t,   delta_{t|s} = delta_t - a^2 delta_s,   a = (1 - m_t) / (1 - m_s).
        Why: for s < t the bridge is Markov with x_t = a x_s + (m_t - a m_s) y + N(0, delta_{t|s}), so
        q(x_s | x_t, x0, y) is Gaussian with variance sigma^2 and mean mu_s + (a delta_s / delta_t)(x_t - mu_t),
        and a delta_s / delta_t is the square root above. So the mean is always this exact posterior mean and
        eta scales the noise alone: eta = 1 samples the posterior, eta = 0 follows its mean, and an eta below 1
        gives samples narrower than the bridge marginal q(x_s | x0, y) (unlike DDIM's eta, which also changes
        the mean coefficient to keep that marginal). The last step (t = 0) returns x0_hat itself.
        """
        if not eta >= 0:
            raise ShipReIDError(f"eta (BBDM.SAMPLE_ETA) scales the sampling noise: it must be >= 0, got {eta}")
        timesteps = self.sample_timesteps(steps)
        x = y.to(_work_dtype(y))
        batch = y.shape[0]
        x0_hat = x
        for i, t_int in enumerate(timesteps):
            t = torch.full((batch,), t_int, device=y.device, dtype=torch.long)
            x0_hat = self.predict_x0(x, y, t, model(x, t, y))
            if clip:
                x0_hat = x0_hat.clamp(*DATA_RANGE)
            if i == len(timesteps) - 1:
                break
            s = torch.full((batch,), timesteps[i + 1], device=y.device, dtype=torch.long)
            m_t, m_s = self._coef(self.m, t, x), self._coef(self.m, s, x)
            delta_t, delta_s = self._coef(self.delta, t, x), self._coef(self.delta, s, x)
            a = (1.0 - m_t) / (1.0 - m_s)
            delta_ts = (delta_t - a ** 2 * delta_s).clamp_min(0.0)
            sigma2 = delta_s * delta_ts / delta_t
            mu_t = (1.0 - m_t) * x0_hat + m_t * y
            mu_s = (1.0 - m_s) * x0_hat + m_s * y
            x = mu_s + ((delta_s - sigma2).clamp_min(0.0) / delta_t).sqrt() * (x - mu_t)
            if eta > 0:
                x = x + eta * sigma2.sqrt() * _gaussian(x.shape, x, generator).to(x.dtype)
        return x0_hat
