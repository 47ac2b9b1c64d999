"""Recurrent PPO on gymnax's MemoryChain-bsuite: an LSTM policy remembers a bit.

The environment (bsuite's memory chain, in JAX by gymnax): the first
observation shows a context bit (+1 or -1), the following ``memory_length``
observations show only the time left, and at the last step the agent must take
the action equal to the bit: reward +1 if right, -1 if wrong, nothing before.
An episode lasts ``memory_length + 1`` steps. A memoryless policy can only
guess (success 0.5); a recurrent one has to carry the bit in its state.

Training is PPO (clipped surrogate, GAE, value head and policy head on one
network), jitted end to end: one call runs a rollout of ``--num-steps`` steps
of ``--num-envs`` environments in one ``lax.scan`` (the policy fed one step at
a time with ``training.stream_step``, the LSTM carry reset where an episode
ended), then ``--epochs`` passes of minibatch updates over whole environment
rows. The update reruns the LSTM over each stored row of ``--num-steps`` steps
with ``lj.lstm``, starting from the carry the rollout started from
(``initial_state``) and resetting it to zero at each episode start
(``resets``), so the recomputed policy is exactly the one that acted. The
carry is kept from one rollout to the next, so episodes that straddle two
rollouts are seen whole by the policy; the gradient, though, stops at the
rollout boundary (truncated BPTT), so the rollout is longer than an episode
(default ``2 * (memory_length + 1)``) and the environments start out of step
(random offsets), so that many episodes lie whole inside one rollout.

The same agent with a two-layer MLP instead of the LSTM is trained beside it
(the baseline), and a sweep trains the LSTM agent at several memory lengths.
Success rate = fraction of episodes whose last action is right; the final
figures come from greedy (argmax) play of --eval-episodes fresh episodes.

    python examples/rl_memory.py --out runs/rl_memory              # full run
    python examples/rl_memory.py --quick --out /tmp/rl_memory      # smoke test

Writes metrics.json (``success_rate``: final greedy success of the LSTM at the
default memory length, ``success_rate_mlp``: the MLP's, the sweep, the
training curves), success.png (success vs environment steps, both agents),
memory_length.png (final success vs memory length, LSTM) and metrics.jsonl/.csv.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _common  # noqa: E402
import lstm_jax as lj  # noqa: E402
from lstm_jax import training as tr  # noqa: E402


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.splitlines()[0], "runs/rl_memory")
    parser.add_argument("--memory-length", type=int, default=20)
    parser.add_argument("--sweep", default="5,10,20,30,40,50,80",
                        help="memory lengths of the LSTM sweep ('' for none)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=None,
                        help="rollout length (default 2 * (memory_length + 1))")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--gae-lambda", type=float, default=0.95)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--entropy", type=float, default=0.01)
    parser.add_argument("--eval-episodes", type=int, default=2048)
    parser.add_argument("--no-baseline", action="store_true", help="skip the MLP agent")
    args = parser.parse_args(argv)
    if args.quick:
        args.sweep = "5,10" if args.sweep == parser.get_default("sweep") else args.sweep
    # --steps: PPO updates (each num_envs * num_steps environment steps)
    args.steps = args.steps or (150 if args.quick else 300)
    return args


# ----------------------------------------------------------------------------- environment


def make_env(memory_length: int):
    import gymnax

    env, env_params = gymnax.make("MemoryChain-bsuite")
    return env, env_params.replace(memory_length=memory_length)


# ----------------------------------------------------------------------------- agent


def init_agent(key, kind: str, obs_size: int, hidden: int, num_actions: int) -> dict:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    if kind == "lstm":
        body = {"lstm": lj.init_lstm(k1, obs_size, hidden)}
    else:
        body = {"mlp1": tr.init_dense(k1, obs_size, hidden), "mlp2": tr.init_dense(k2, hidden, hidden)}
    actor = tr.init_dense(k3, hidden, num_actions)
    return {**body, "actor": actor._replace(w=actor.w * 0.01),  # a near-uniform first policy
            "critic": tr.init_dense(k4, hidden, 1)}  # fmt: skip


def heads(params, y):
    return tr.dense(params["actor"], y), tr.dense(params["critic"], y)[..., 0]


def mlp(params, obs):
    return jnp.tanh(tr.dense(params["mlp2"], jnp.tanh(tr.dense(params["mlp1"], obs))))


def zero_carry(params, num_envs: int):
    if "lstm" not in params:
        return jnp.zeros((num_envs,))  # a placeholder: the MLP has no state
    return tr.init_stream_state(params["lstm"], (num_envs,))  # h, c: [1, N, H]


def act(params, carry, obs, reset):
    """One step of the policy for all environments: ``obs [N, F]``, ``reset [N]``."""
    if "lstm" not in params:
        return heads(params, mlp(params, obs)), carry
    carry = jax.tree_util.tree_map(lambda a: jnp.where(reset[None, :, None], 0.0, a), carry)
    y, carry = tr.stream_step(params["lstm"], carry, obs)  # y: [N, H]
    return heads(params, y), carry


def unroll(params, obs, carry0, resets):
    """The policy over stored rows: ``obs [N, T, F]``, ``resets [N, T]``, carry at t = 0.

    ``lj.lstm`` resets a row's state to its ``initial_state`` where ``resets``
    is True, but here the rollout's carry must be used until the first episode
    start of each row and zeros after each one. So two calls: one from the
    carry, masked after the first reset, and one from zeros with the resets.
    """
    if "lstm" not in params:
        return heads(params, mlp(params, obs))
    before = jnp.cumsum(resets, axis=1) == 0  # [N, T]: no episode start yet at or before t
    ys_carried, _ = lj.lstm(params["lstm"], obs, initial_state=carry0, mask=before)
    ys_reset, _ = lj.lstm(params["lstm"], obs, resets=resets)
    return heads(params, jnp.where(before[..., None], ys_carried, ys_reset))  # [N, T, H]


# ----------------------------------------------------------------------------- PPO


class Runner(NamedTuple):
    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array  # [N, F]
    last_done: jax.Array  # [N] bool: the next step starts an episode
    carry: object  # LSTMState h, c: [1, N, H] (or a placeholder)
    key: jax.Array


def make_train(args, kind: str, memory_length: int):
    env, env_params = make_env(memory_length)
    obs_size = env.observation_space(env_params).shape[0]
    num_actions = env.action_space(env_params).n
    n_envs = args.num_envs
    n_steps = args.num_steps or 2 * (memory_length + 1)
    # the learning rate falls linearly to 0 (as in PureJaxRL): with a constant one, a late
    # destructive update can leave a final policy far worse than the one before it
    schedule = optax.linear_schedule(args.lr, 0.0, args.steps * args.epochs * args.minibatches)
    optimizer = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(schedule, eps=1e-5))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    v_reset = jax.vmap(env.reset, in_axes=(0, None))

    def init(key):
        k_params, k_env, k_offset, k_run = jax.random.split(key, 4)
        params = init_agent(k_params, kind, obs_size, args.hidden, num_actions)
        obs, env_state = v_reset(jax.random.split(k_env, n_envs), env_params)
        # start the environments out of step: env b first plays offset_b random steps
        offsets = jax.random.randint(k_offset, (n_envs,), 0, memory_length + 1)

        def warm(carry, t):
            obs, env_state, key = carry
            key, k_act, k_step = jax.random.split(key, 3)
            actions = jax.random.randint(k_act, (n_envs,), 0, num_actions)
            new_obs, new_state, *_ = v_step(jax.random.split(k_step, n_envs), env_state,
                                            actions, env_params)  # fmt: skip
            go = t < offsets
            pick = lambda a, b: jnp.where(go.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
            return (pick(new_obs, obs), jax.tree_util.tree_map(pick, new_state, env_state), key), None

        (obs, env_state, _), _ = jax.lax.scan(warm, (obs, env_state, k_env),
                                              jnp.arange(memory_length + 1))  # fmt: skip
        # an env whose offset ended an episode is at a fresh one: its carry starts at zero anyway
        return Runner(params, optimizer.init(params), env_state, obs,
                      jnp.ones((n_envs,), bool), zero_carry(params, n_envs), k_run)  # fmt: skip

    def rollout(runner: Runner):
        def step(r: Runner, _):
            key, k_act, k_env = jax.random.split(r.key, 3)
            (logits, value), carry = act(r.params, r.carry, r.obs, r.last_done)
            action = jax.random.categorical(k_act, logits)
            logp = jax.nn.log_softmax(logits)[jnp.arange(n_envs), action]
            obs, env_state, reward, terminated, truncated, _ = v_step(
                jax.random.split(k_env, n_envs), r.env_state, action, env_params)
            done = terminated | truncated
            record = {"obs": r.obs, "resets": r.last_done, "action": action, "logp": logp,
                      "value": value, "reward": reward, "done": done}  # fmt: skip
            return r._replace(env_state=env_state, obs=obs, last_done=done, carry=carry,
                              key=key), record  # fmt: skip

        runner2, traj = jax.lax.scan(step, runner, None, length=n_steps)  # [T, N, ...]
        (_, last_value), _ = act(runner2.params, runner2.carry, runner2.obs, runner2.last_done)
        return runner2, traj, last_value

    def advantages(traj, last_value):
        def back(next_, t):
            adv_next, value_next = next_
            not_done = 1.0 - t["done"].astype(jnp.float32)
            delta = t["reward"] + args.gamma * value_next * not_done - t["value"]
            adv = delta + args.gamma * args.gae_lambda * not_done * adv_next
            return (adv, t["value"]), adv

        _, adv = jax.lax.scan(back, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
        return adv, adv + traj["value"]  # [T, N]

    def loss_fn(params, batch):
        logits, values = unroll(params, batch["obs"], batch["carry0"], batch["resets"])
        logp_all = jax.nn.log_softmax(logits)  # [n, T, A]
        logp = jnp.take_along_axis(logp_all, batch["action"][..., None], -1)[..., 0]
        ratio = jnp.exp(logp - batch["logp"])
        adv = (batch["adv"] - batch["adv"].mean()) / (batch["adv"].std() + 1e-8)
        pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - args.clip, 1 + args.clip) * adv).mean()
        v_loss = 0.5 * jnp.mean((values - batch["returns"]) ** 2)
        entropy = -jnp.mean(jnp.sum(jnp.exp(logp_all) * logp_all, -1))
        loss = pg + 0.5 * v_loss - args.entropy * entropy
        return loss, {"pg_loss": pg, "value_loss": v_loss, "entropy": entropy}

    def update(runner: Runner):
        carry0 = runner.carry
        runner, traj, last_value = rollout(runner)
        adv, returns = advantages(traj, last_value)
        to_rows = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731  [T, N, ...] -> [N, T, ...]
        data = {k: to_rows(traj[k]) for k in ("obs", "resets", "action", "logp")}
        data.update(adv=to_rows(adv), returns=to_rows(returns))

        def epoch(carry, key):
            params, opt_state = carry
            perm = jax.random.permutation(key, n_envs).reshape(args.minibatches, -1)

            def minibatch(carry, rows):
                params, opt_state = carry
                batch = {k: v[rows] for k, v in data.items()}
                # the carry's batch axis is 1: [1, N, H]
                batch["carry0"] = jax.tree_util.tree_map(lambda a: a[:, rows], carry0) \
                    if "lstm" in params else None
                (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), metrics

            return jax.lax.scan(minibatch, (params, opt_state), perm)

        key, k_epochs = jax.random.split(runner.key)
        (params, opt_state), metrics = jax.lax.scan(
            epoch, (runner.params, runner.opt_state), jax.random.split(k_epochs, args.epochs))
        ended = traj["done"].sum()
        wins = jnp.sum(traj["done"] & (traj["reward"] > 0))
        stats = {k: v.mean() for k, v in metrics.items()}
        stats.update(episodes=ended, successes=wins)
        return runner._replace(params=params, opt_state=opt_state, key=key), stats

    def evaluate(params, key, episodes: int):
        """Greedy play of ``episodes`` fresh episodes: the fraction won."""
        k_reset, k_run = jax.random.split(key)
        obs, env_state = v_reset(jax.random.split(k_reset, episodes), env_params)
        v_step_eval = jax.vmap(env.step, in_axes=(0, 0, 0, None))

        def step(c, key):
            obs, env_state, carry, first, total = c
            (logits, _), carry = act(params, carry, obs, first)
            obs, env_state, reward, *_ = v_step_eval(jax.random.split(key, episodes), env_state,
                                                     jnp.argmax(logits, -1), env_params)
            return (obs, env_state, carry, jnp.zeros_like(first), total + reward), None

        init = (obs, env_state, zero_carry(params, episodes), jnp.ones((episodes,), bool),
                jnp.zeros((episodes,)))  # fmt: skip
        (*_, total), _ = jax.lax.scan(step, init, jax.random.split(k_run, memory_length + 1))
        return jnp.mean(total > 0)

    return jax.jit(init), jax.jit(update), jax.jit(evaluate, static_argnums=2), n_envs * n_steps


def train(args, kind: str, memory_length: int, *, desc: str):
    init, update, evaluate, env_steps_per_update = make_train(args, kind, memory_length)
    from tqdm.auto import tqdm

    runner = init(jax.random.key(args.seed))
    history, t0 = [], time.perf_counter()
    every = _common.log_every(args.steps, default=10)
    window = []
    for step in tqdm(range(args.steps), disable=args.no_progress, desc=desc):
        runner, stats = update(runner)
        window.append(stats)
        if (step + 1) % every == 0 or step + 1 == args.steps:
            stats = jax.device_get(window)
            episodes = sum(int(s["episodes"]) for s in stats)
            row = {"step": step + 1, "env_steps": (step + 1) * env_steps_per_update,
                   "success": sum(int(s["successes"]) for s in stats) / max(episodes, 1),
                   "entropy": float(np.mean([s["entropy"] for s in stats])),
                   "time_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
            history.append(row)
            window = []
    wall = time.perf_counter() - t0
    success = float(evaluate(runner.params, jax.random.key(args.seed + 1000), args.eval_episodes))
    print(f"  {kind} memory_length={memory_length}: greedy success {success:.3f}, "
          f"training success (last log) {history[-1]['success']:.3f}, {wall:.0f} s", flush=True)
    return {"success_rate": success, "history": history, "train_wall_s": wall,
            "env_steps": args.steps * env_steps_per_update, "params": tr.count_params(runner.params)}


def plot_success(curves: dict, path: str, *, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, history in curves.items():
        ax.plot([r["env_steps"] for r in history], [r["success"] for r in history], label=name)
    ax.axhline(0.5, color="gray", ls=":", label="guessing")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success rate (training episodes)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_sweep(sweep: dict, path: str, *, title: str):
    from matplotlib.figure import Figure

    lengths = sorted(int(k) for k in sweep)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(lengths, [sweep[str(n)]["success_rate"] for n in lengths], marker="o", label="LSTM")
    ax.axhline(0.5, color="gray", ls=":", label="guessing")
    ax.set_xlabel("memory_length (steps between the cue and the decision)")
    ax.set_ylabel("greedy success rate after training")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    writer = tr.MetricsWriter(args.out, start_step=0)
    L = args.memory_length
    lstm = train(args, "lstm", L, desc=f"PPO LSTM, memory {L}")
    mlp_run = None if args.no_baseline else train(args, "mlp", L, desc=f"PPO MLP, memory {L}")
    for agent, r in (("lstm", lstm), ("mlp", mlp_run or {"history": []})):
        for row in r["history"]:
            writer.write({**row, "agent": agent, "memory_length": L})
    sweep = {str(L): {k: lstm[k] for k in ("success_rate", "train_wall_s", "env_steps")}}
    for n in [int(s) for s in args.sweep.split(",") if s.strip()]:
        if str(n) not in sweep:
            r = train(args, "lstm", n, desc=f"PPO LSTM, memory {n}")
            sweep[str(n)] = {k: r[k] for k in ("success_rate", "train_wall_s", "env_steps")}
    curves = {f"LSTM policy (final greedy {lstm['success_rate']:.2f})": lstm["history"]}
    if mlp_run:
        curves[f"MLP policy (final greedy {mlp_run['success_rate']:.2f})"] = mlp_run["history"]
    mlp_run = mlp_run or {k: None for k in ("success_rate", "params", "train_wall_s", "history")}
    plot_success(curves, os.path.join(args.out, "success.png"),
                 title=f"PPO on MemoryChain-bsuite, memory_length={L}")  # fmt: skip
    plot_sweep(sweep, os.path.join(args.out, "memory_length.png"),
               title=f"LSTM PPO: success vs memory length ({args.steps} updates each)")
    result = {
        "task": "rl_memory", "env": "MemoryChain-bsuite (gymnax)", "memory_length": L,
        "success_rate": lstm["success_rate"], "success_rate_mlp": mlp_run["success_rate"],
        "env_steps": lstm["env_steps"], "updates": args.steps, "num_envs": args.num_envs,
        "num_steps": args.num_steps or 2 * (L + 1), "hidden": args.hidden,
        "params_lstm": lstm["params"], "params_mlp": mlp_run["params"],
        "train_wall_s_lstm": lstm["train_wall_s"], "train_wall_s_mlp": mlp_run["train_wall_s"],
        "sweep": sweep, "history_lstm": lstm["history"], "history_mlp": mlp_run["history"],
        "run": _common.run_info(),
    }  # fmt: skip
    tr.write_json(os.path.join(args.out, "metrics.json"), result)
    print(f"rl_memory: memory_length={L}: LSTM success {lstm['success_rate']:.3f}, "
          f"MLP success {mlp_run['success_rate']} ({lstm['env_steps']} env steps each)")
    _common.print_outputs(args.out)
    return result


if __name__ == "__main__":
    run(parse_args())
