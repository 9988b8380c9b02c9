#!/bin/bash
# Train an esm-emu emulator on several GPU nodes under PBS Pro (e.g. NCAR Derecho): one rank per GPU.
# Same `esm-emu train CONFIG` command as on a laptop; torch.distributed is bootstrapped from MPI.
# Submit:  qsub -v CONFIG=configs/emulator_lstm.yaml hpc/pbs_train.sh
#PBS -N esm-emu-train
#PBS -l select=2:ncpus=64:mpiprocs=4:ngpus=4
#PBS -l walltime=04:00:00
#PBS -j oe
# #PBS -A <project>   and   #PBS -q <gpu queue>   as your site requires
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
CONFIG=${CONFIG:?qsub -v CONFIG=path/to/config.yaml hpc/pbs_train.sh}

# Site environment (edit):
# module load cuda cray-mpich
# source /path/to/esm-emu/.venv/bin/activate    (mpi4py built against cray-mpich)
export OMP_NUM_THREADS=16
NODES=$(sort -u "$PBS_NODEFILE" | wc -l)
RANKS_PER_NODE=4                      # = GPUs per node (mpiprocs above)

# PBS sends SIGTERM before killing a job at its walltime (qdel too): esm-emu writes checkpoint.pt
# and exits 0; submitting the same job again resumes from it.
# Cray PALS syntax; with Open MPI use:  mpirun -n $((NODES*RANKS_PER_NODE)) --map-by ppr:4:node ...
mpiexec -n $((NODES * RANKS_PER_NODE)) -ppn "$RANKS_PER_NODE" esm-emu train "$CONFIG" --quiet
