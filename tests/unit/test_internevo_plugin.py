"""The InternEvo plugin in one process: registration, import order, CPU accelerator, traps."""

import subprocess
import sys

import pytest

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("first, second", [("rethinktiny", "internlm"), ("internlm", "rethinktiny")])
def test_registered_whichever_is_imported_first(first, second):
    result = _run_python(
        f"import {first}, {second}\n"
        "from rethinktiny.internevo.api import model_registry\n"
        "from internlm.checkpoint.checkpoint_manager import CheckpointLoadMethod\n"
        "from internlm.accelerator import get_accelerator\n"
        "registry = model_registry()\n"
        "print(registry.has('PANGU_PI_PRO'), registry.has('PANGU_PI'),\n"
        "      'inherited' in CheckpointLoadMethod.LOAD_TYPE_FUNC, get_accelerator().get_backend_name())\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "True", "cpu"]


def test_register_twice_is_harmless():
    result = _run_python("import rethinktiny.internevo as p\np.register(); p.register()\n"
                         "from rethinktiny.internevo.api import model_types\n"
                         "print([k for k in model_types() if k.startswith('PANGU')], 'LLAMA2' in model_types())")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "['PANGU_PI', 'PANGU_PI_PRO'] True"


def test_register_without_a_model_registry_fails_loudly_and_can_be_retried():
    """InternEvo moved its registry (simulated: rethinktiny looks where none is): register() raises
    one line naming where it looked and stays retryable; with the registry back, one call does all."""
    result = _run_python(
        "import os\n"
        "os.environ['RETHINKTINY_NO_INTERNEVO'] = '1'\n"
        "import rethinktiny.internevo as p\n"
        "from rethinktiny.internevo import api\n"
        "real = api.REGISTRY_LOCATIONS\n"
        "api.REGISTRY_LOCATIONS = (('internlm.moved.registry', 'model_initializer'),)\n"
        "try:\n"
        "    p.register()\n"
        "except api.InternEvoAPIError as err:\n"
        "    print('ERROR', str(err))\n"
        "print('STATE', p._state)\n"
        "api.REGISTRY_LOCATIONS = real\n"
        "p.register()\n"
        "from internlm.checkpoint.checkpoint_manager import CheckpointLoadMethod\n"
        "print('STATE', p._state, api.model_registry().has('PANGU_PI_PRO'), 'inherited' in CheckpointLoadMethod.LOAD_TYPE_FUNC)\n")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines == ["ERROR no InternEvo model registry found (looked for internlm.moved.registry.model_initializer); "
                     "rethinktiny cannot register PANGU_PI_PRO with this InternEvo", "STATE idle", "STATE done True True"]


def core_modules() -> list[str]:
    """Every module of the package except rethinktiny.internevo* (the one allowed to import internlm)
    and __main__ (importing it runs the CLI)."""
    import pkgutil

    import rethinktiny

    names = ["rethinktiny"] + [m.name for m in pkgutil.walk_packages(rethinktiny.__path__, "rethinktiny.")]
    return [name for name in names if not name.startswith("rethinktiny.internevo")
            and not name.endswith(".__main__")]


def test_core_imports_with_internlm_blocked():
    import rethinktiny

    modules = core_modules()
    # the list is the package, not a hand-picked sample: a new module is checked without editing this test
    assert {"rethinktiny.model", "rethinktiny.cli.train", "rethinktiny.dtypes", "rethinktiny.vocab.count"} <= set(modules)
    assert len(modules) > 60
    code = ("import sys\nsys.modules['internlm'] = None\n"
            + "".join(f"import {m}\n" for m in modules)
            + "assert sys.modules['internlm'] is None\nprint('ok')")
    result = _run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rethinktiny.__version__


def test_tcp_init_method_formats_every_address_kind():
    from rethinktiny.internevo.compat import tcp_init_method

    assert tcp_init_method("127.0.0.1", 29500) == "tcp://127.0.0.1:29500"
    assert tcp_init_method("node-01", 29500) == "tcp://node-01:29500"
    assert tcp_init_method("::1", 29500) == "tcp://[::1]:29500"
    assert tcp_init_method("[fe80::1]", 1) == "tcp://[fe80::1]:1"


def test_cpu_accelerator_covers_what_internevo_calls():
    import torch

    import rethinktiny.internevo as plugin
    plugin.register()
    from internlm.accelerator import get_accelerator
    from internlm.utils.common import get_current_device

    acc = get_accelerator()
    assert acc.communication_backend_name() == "gloo" and get_current_device() == torch.device("cpu")
    acc.current_stream().synchronize()
    state = acc.get_rng_state()
    a = torch.rand(3)
    acc.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))
    with acc.amp.autocast(dtype=torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_sampler_state_with_numpy_arrays_loads_weights_only(tmp_path):
    # what a resume reads: numpy arrays and numpy's RNG state inside a torch-saved dict
    path = tmp_path / "sampler.pt"
    result = _run_python(
        "import numpy as np, torch\n"
        "state = {'rng': np.random.RandomState(3).get_state(), 'order': np.arange(5, dtype=np.int32),\n"
        "         'weights': np.linspace(0, 1, 4), 'flags': np.array([True, False])}\n"
        f"torch.save(state, {str(path)!r})\n"
        "try:\n"
        f"    torch.load({str(path)!r}, weights_only=True)\n"
        "except Exception as err:\n"
        "    print('refused before', type(err).__name__)\n"
        "from rethinktiny.internevo.compat import allow_internevo_checkpoint_classes\n"
        "allow_internevo_checkpoint_classes()\n"
        f"loaded = torch.load({str(path)!r}, weights_only=True)\n"
        "print(loaded['order'].tolist(), loaded['rng'][1][:2].tolist() == state['rng'][1][:2].tolist(),\n"
        "      loaded['weights'].dtype, loaded['flags'].tolist())\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["refused before UnpicklingError", "[0, 1, 2, 3, 4] True float64 [True, False]"]


def test_optimizer_state_naming_parallel_mode_by_name_loads_weights_only(tmp_path):
    # Debian's Python 3.11.2 and Python 3.12+ pickle InternEvo's ParallelMode.ZERO1 (in every
    # optimizer param group) as getattr(ParallelMode, 'ZERO1'); 3.11.7 pickles it by value. Both
    # forms must resume with weights_only=True, whatever Python this test runs on.
    path = tmp_path / "optimizer.pt"
    result = _run_python(
        "import torch\n"
        "from internlm.core.context import ParallelMode\n"
        "class ByName:\n"
        "    def __reduce__(self):\n"
        "        return getattr, (ParallelMode, 'ZERO1')\n"
        f"torch.save({{'param_groups': [{{'optimizer_mode': ByName()}}, {{'optimizer_mode': ParallelMode.DATA}}]}}, {str(path)!r})\n"
        "from rethinktiny.internevo.compat import allow_internevo_checkpoint_classes\n"
        "allow_internevo_checkpoint_classes()\n"
        f"groups = torch.load({str(path)!r}, weights_only=True)['param_groups']\n"
        "print([g['optimizer_mode'] for g in groups])\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[<ParallelMode.ZERO1: 'zero1'>, <ParallelMode.DATA: 'data'>]"
