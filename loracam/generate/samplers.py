"""Samplers and schedule types by their A1111 names, mapped to diffusers schedulers (interop.md §8).

Pixel parity with A1111 is not promised: A1111 samples with k-diffusion, whose RNG use and sigma
spacing differ in details from diffusers' schedulers. The mapping gives the same algorithm and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loracam.errors import LoracamError


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers class name
    kwargs: dict = field(default_factory=dict)
    default_schedule: str = "Automatic"  # what A1111's "Automatic" resolves to for this sampler
    k_diffusion: bool = True  # A1111 runs it through k-diffusion (linspace timesteps)


SAMPLERS: dict[str, SamplerSpec] = {
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"),
    # lower_order_final: diffusers requires it with a zero final sigma and warns otherwise.
    "DPM++ SDE": SamplerSpec("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "lower_order_final": True}, "Karras"),
    "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "Exponential"),
    "DPM++ 2M SDE Heun": SamplerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}, "Exponential"
    ),
    "DPM++ 3M SDE": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "Exponential"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler", {}, "Karras"),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler", {}, "Karras"),
    "DDIM": SamplerSpec("DDIMScheduler", {"set_alpha_to_one": False}, k_diffusion=False),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}, k_diffusion=False),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", {}, k_diffusion=False),
    "LCM": SamplerSpec("LCMScheduler", {}, k_diffusion=False),
    "DDPM": SamplerSpec("DDPMScheduler", {}, k_diffusion=False),
}

# Old A1111 / k-diffusion short names still found in scripts and infotexts.
ALIASES = {
    "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "k_euler": "Euler", "k_lms": "LMS",
    "k_heun": "Heun", "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE", "k_dpmpp_2m_sde": "DPM++ 2M SDE", "ddim": "DDIM", "plms": "PLMS",
    "unipc": "UniPC", "lcm": "LCM", "ddpm": "DDPM",
    # ComfyUI's KSampler names, which flow-model users bring along
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpmpp_2m": "DPM++ 2M", "uni_pc": "UniPC",
    "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_sde": "DPM++ SDE", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
}

# Flow-matching families (Z-Image, FLUX): the samplers that have a flow version in diffusers, under the same names.
# "Euler" is the family pipelines' own FlowMatchEulerDiscreteScheduler; "Euler a" its stochastic form (each step
# re-noises the predicted image to the next sigma, what ComfyUI's euler_ancestral does for flow models at eta 1);
# the multistep solvers run on flow sigmas with flow predictions.
FLOW_SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("FlowMatchEulerDiscreteScheduler", k_diffusion=False),
    "Euler a": SamplerSpec("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, k_diffusion=False),
    "Heun": SamplerSpec("FlowMatchHeunDiscreteScheduler", k_diffusion=False),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                            "use_flow_sigmas": True, "prediction_type": "flow_prediction"}, k_diffusion=False),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
                         k_diffusion=False),
    "LCM": SamplerSpec("FlowMatchLCMScheduler", k_diffusion=False),
}

# Schedule type -> scheduler options. "timestep_spacing" is applied only where the class takes it.
SCHEDULES: dict[str, dict] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}


def _lookup(table: dict, name: str) -> str | None:
    folded = {k.casefold(): k for k in table}
    return folded.get(name.strip().casefold())


def parse_sampler(name: str, schedule: str = "Automatic") -> tuple[str, str]:
    """Canonical (sampler, schedule type); accepts legacy combined names like "DPM++ 2M Karras"."""
    sampler = _lookup(SAMPLERS, name) or ALIASES.get(name.strip().lower())
    if sampler is None:
        for sched in sorted(SCHEDULES, key=len, reverse=True):
            head = name.strip()
            if head.casefold().endswith(" " + sched.casefold()):
                base = _lookup(SAMPLERS, head[: -len(sched) - 1])
                if base is not None:
                    if schedule not in ("Automatic", "", None) and _lookup(SCHEDULES, schedule) != sched:
                        raise LoracamError(f"sampler {name!r} already names schedule {sched}; drop --schedule {schedule}")
                    return base, sched
    if sampler is None:
        raise LoracamError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    sched = _lookup(SCHEDULES, schedule or "Automatic")
    if sched is None:
        raise LoracamError(f"unknown schedule type {schedule!r}; valid types: {', '.join(SCHEDULES)}")
    return sampler, sched


def resolved_schedule(sampler: str, schedule: str, table: dict[str, SamplerSpec] | None = None) -> str:
    """What A1111 writes as "Schedule type": Automatic becomes the sampler's default when it has one."""
    return (table or SAMPLERS)[sampler].default_schedule if schedule == "Automatic" else schedule


def flow_sampler(sampler: str, family: str) -> SamplerSpec:
    """The flow version of an A1111 sampler, or a LoracamError naming the ones there are."""
    if sampler not in FLOW_SAMPLERS:
        raise LoracamError(f"{sampler} has no flow-matching version for {family} (a flow model is not sampled on "
                           f"a noise schedule); use {', '.join(FLOW_SAMPLERS)} (Euler is the model's own)")
    return FLOW_SAMPLERS[sampler]


def build_scheduler(base_config: dict, sampler: str, schedule: str, table: dict[str, SamplerSpec] | None = None):
    """A fresh diffusers scheduler for (sampler, schedule) on the base model's noise schedule (``table``:
    FLOW_SAMPLERS for a flow model)."""
    import diffusers
    import inspect

    spec = (table or SAMPLERS)[sampler]
    cls = getattr(diffusers, spec.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    opts = dict(spec.kwargs)
    if spec.k_diffusion:
        opts["timestep_spacing"] = "linspace"  # k-diffusion spaces timesteps evenly from T-1 to 0
    sched_opts = SCHEDULES[resolved_schedule(sampler, schedule, table)]
    missing = [k for k in sched_opts if k not in accepted and k != "timestep_spacing"]
    if missing:
        ok = [s for s in SCHEDULES if all(k in accepted or k == "timestep_spacing" for k in SCHEDULES[s])]
        raise LoracamError(f"schedule type {schedule!r} is not available for {sampler}; use one of: {', '.join(ok)}")
    opts.update({k: v for k, v in sched_opts.items() if k in accepted})
    config = {k: v for k, v in base_config.items() if k in accepted or k in ("num_train_timesteps",)}
    if "flow_shift" in accepted and "shift" in base_config:  # the multistep solvers name the flow shift so
        config["flow_shift"] = base_config["shift"]
    config.update(opts)
    return cls.from_config(config)
