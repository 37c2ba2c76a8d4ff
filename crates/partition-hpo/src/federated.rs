//! Federated learning with partitioned networks, the paper's FedAvg application (the spec's
//! optional toy): the training rows are split over label-skewed clients
//! ([`crate::data::label_skewed_clients`]). Every round, each client trains the global network
//! for `steps / rounds` local steps on its own rows — its own C data shards, the global weight
//! partitions, `psi` steps on its own out-of-training-sample loss — and the server averages the
//! trained weights, biases and `psi` logits, each client weighted by its rows (FedAvg, McMahan et
//! al. 2017; `psi` is aggregated like the weights).
//!
//! Choices: all clients share the weight partitions and initial values (built from the run's
//! seed), so partition k of the global network has only ever been trained on shards 1..k of
//! every client and the out-of-training-sample objective keeps its meaning. Optimiser states
//! start afresh every round (the usual FedAvg client), at a constant learning rate per round
//! that follows the run's cosine schedule over the rounds. Client `c`'s shards, batches and
//! hyperparameter draws come from the seed `seed + (c + 1) * 2^32`, its batch stream continuing
//! over the rounds.

use std::time::Instant;

use burn::module::Param;
use burn::prelude::*;
use foundation::progress::{NoProgress, Progress};
use serde::{Deserialize, Serialize};

use crate::data::{label_skewed_clients, Inputs};
use crate::hpo::{train_from, RunConfig, RunOutcome, Start, TracePoint};
use crate::model::PartitionedNet;
use crate::HpoError;

/// Settings of a federated run (the rest is the [`RunConfig`]: `steps` counts the local steps
/// of one client over all rounds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederatedConfig {
    /// Number of clients.
    pub clients: usize,
    /// Communication rounds.
    pub rounds: usize,
}

impl FederatedConfig {
    /// Checks the settings against the run's: at least one client and round, and at least one
    /// hyperparameter step per client and round (`steps / rounds >= psi_every`).
    pub fn validate(&self, run: &RunConfig) -> Result<(), HpoError> {
        if self.clients == 0 || self.rounds == 0 {
            return Err(HpoError::InvalidArgument(
                "a federated run needs at least one client and one round".into(),
            ));
        }
        if run.steps / self.rounds < run.psi_every {
            return Err(HpoError::InvalidArgument(format!(
                "{} steps over {} rounds leave {} local steps per round, fewer than one psi step every {}",
                run.steps,
                self.rounds,
                run.steps / self.rounds,
                run.psi_every
            )));
        }
        Ok(())
    }
}

/// The trained values of a network as host vectors: the weight and bias of every convolution,
/// then of every linear layer, then the `psi` rotation, mask and dropout logits.
#[derive(Clone, Debug, PartialEq)]
pub struct NetValues {
    /// The tensors' values, in the order above.
    pub tensors: Vec<Vec<f32>>,
}

/// Every trained parameter of `net`, in [`NetValues`] order.
fn trained_params(net: &mut PartitionedNet) -> Vec<ParamRef<'_>> {
    let mut out = Vec::new();
    for c in &mut net.convs {
        out.push(ParamRef::Four(&mut c.weight));
        out.push(ParamRef::One(&mut c.bias));
    }
    for l in &mut net.layers {
        out.push(ParamRef::Two(&mut l.weight));
        out.push(ParamRef::One(&mut l.bias));
    }
    out.push(ParamRef::One(&mut net.psi.rotation));
    out.push(ParamRef::One(&mut net.psi.mask));
    out.push(ParamRef::One(&mut net.psi.dropout));
    out
}

/// A trained parameter of one of the ranks the network has.
enum ParamRef<'a> {
    One(&'a mut Param<Tensor<1>>),
    Two(&'a mut Param<Tensor<2>>),
    Four(&'a mut Param<Tensor<4>>),
}

impl ParamRef<'_> {
    fn values(&self) -> Vec<f32> {
        let data = match self {
            ParamRef::One(p) => p.val().into_data(),
            ParamRef::Two(p) => p.val().into_data(),
            ParamRef::Four(p) => p.val().into_data(),
        };
        data.convert::<f32>().try_into_vec::<f32>().expect("f32 parameters")
    }

    fn set(&mut self, values: &[f32]) {
        fn load<const D: usize>(p: &mut Param<Tensor<D>>, values: &[f32]) {
            let t = p.val();
            let (shape, device) = (t.dims(), t.device());
            assert_eq!(values.len(), shape.iter().product::<usize>(), "values of another network");
            *p = Param::from_data(TensorData::new(values.to_vec(), shape), &device);
        }
        match self {
            ParamRef::One(p) => load(p, values),
            ParamRef::Two(p) => load(p, values),
            ParamRef::Four(p) => load(p, values),
        }
    }
}

impl NetValues {
    /// The trained values of `net`.
    pub fn of(net: &PartitionedNet) -> Self {
        let mut net = net.clone();
        Self { tensors: trained_params(&mut net).iter().map(ParamRef::values).collect() }
    }

    /// Replaces the trained values of `net` (same architecture) by these, on its device.
    pub fn load_into(&self, net: &mut PartitionedNet) {
        let mut params = trained_params(net);
        assert_eq!(params.len(), self.tensors.len(), "values of another network");
        for (p, v) in params.iter_mut().zip(&self.tensors) {
            p.set(v);
        }
    }

    /// The mean of `parts` weighted by their (positive) weights: FedAvg's aggregation.
    pub fn weighted_mean(parts: &[(f64, NetValues)]) -> Self {
        let total: f64 = parts.iter().map(|(w, _)| w).sum();
        let first = &parts[0].1;
        let tensors = (0..first.tensors.len())
            .map(|t| {
                (0..first.tensors[t].len())
                    .map(|i| {
                        (parts.iter().map(|(w, v)| w * v.tensors[t][i] as f64).sum::<f64>() / total) as f32
                    })
                    .collect()
            })
            .collect();
        Self { tensors }
    }
}

/// The seed of client `c`'s shards, batches and hyperparameter draws.
pub fn client_seed(seed: u64, client: usize) -> u64 {
    seed.wrapping_add((client as u64 + 1) << 32)
}

/// FedAvg over label-skewed clients of `train` (see the module notes); returns the global
/// network after the last round, its `psi` over the rounds, and the wall time of all clients'
/// training (run one after another here; each client's work is what a device would do).
pub fn train_federated(
    config: &RunConfig,
    fed: &FederatedConfig,
    train: &Inputs,
    device: &Device,
    progress: &dyn Progress,
) -> Result<RunOutcome, HpoError> {
    config.validate()?;
    fed.validate(config)?;
    let local: Vec<Inputs> = label_skewed_clients(&train.y, fed.clients, config.seed)?
        .iter()
        .map(|rows| train.select(rows))
        .collect();
    let local_steps = config.steps / fed.rounds;
    let round_config = RunConfig { steps: local_steps, ..config.clone() };
    let started = Instant::now();
    let mut global: Option<NetValues> = None;
    let mut model: Option<PartitionedNet> = None;
    let mut trace = Vec::with_capacity(fed.rounds + 1);
    let mut final_loss = 0.0;
    progress.start("rounds", fed.rounds as u64);
    for round in 0..fed.rounds {
        // The run's schedule at the round's first step, held constant within the round.
        let lr = config.optim().lr_at(round * local_steps);
        let mut outcomes = Vec::with_capacity(local.len());
        final_loss = 0.0;
        for (c, rows) in local.iter().enumerate() {
            let start = Start {
                values: global.as_ref(),
                data_seed: Some(client_seed(config.seed, c)),
                first_step: round * local_steps,
                constant_lr: Some(lr),
            };
            let out = train_from(&round_config, rows, None, start, device, &NoProgress)?;
            if round == 0 && c == 0 {
                trace.push(out.trace[0].clone());
            }
            final_loss += out.final_loss * rows.n as f64 / train.n as f64;
            outcomes.push((rows.n as f64, NetValues::of(&out.model)));
            model.get_or_insert(out.model);
        }
        let mean = NetValues::weighted_mean(&outcomes);
        let net = model.as_mut().expect("at least one client");
        mean.load_into(net);
        let point = TracePoint::of(net, (round + 1) * local_steps, None);
        progress.advance(1);
        progress.message(&format!("loss {final_loss:.3} theta {:.1}", point.theta_max_deg));
        trace.push(point);
        global = Some(mean);
    }
    progress.finish();
    let model = model.expect("at least one round");
    let psi = model.psi.values();
    Ok(RunOutcome { model, psi, trace, seconds: started.elapsed().as_secs_f64(), final_loss })
}
