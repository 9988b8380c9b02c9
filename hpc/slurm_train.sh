#!/bin/bash
# Train an esm-emu emulator on several GPU nodes under Slurm: one MPI rank per GPU.
# The command is the same `esm-emu train CONFIG` as on a laptop; rank/size/local rank come from
# MPI (mpi4py built against the site MPI), rank 0 broadcasts the rendezvous address and port,
# NCCL does the gradient all-reduce. Submit:  sbatch hpc/slurm_train.sh configs/emulator_lstm.yaml
#SBATCH --job-name=esm-emu-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # = GPUs per node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=TERM@120            # SIGTERM 2 min before the limit: esm-emu checkpoints and exits 0
#SBATCH --requeue                    # a requeued job resumes from RUN_DIR/checkpoint.pt
#SBATCH --output=%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch hpc/slurm_train.sh CONFIG.yaml}

# Site environment (edit): a module for MPI/CUDA and the environment with esm-emu installed.
# module load cuda openmpi            # or cray-mpich
# source /path/to/esm-emu/.venv/bin/activate   (mpi4py must be built against this MPI:
#                                                pip install --no-binary mpi4py mpi4py)
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# Optional: the network interface NCCL/gloo should use, e.g. export NCCL_SOCKET_IFNAME=hsn0
# Optional: export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)

# srun starts one rank per task; --mpi=pmix (or pmi2) lets mpi4py see the job's ranks.
# Equivalent with the site launcher:  mpirun -n "$SLURM_NTASKS" esm-emu train "$CONFIG"
srun --mpi=pmix --kill-on-bad-exit=1 esm-emu train "$CONFIG" --quiet
