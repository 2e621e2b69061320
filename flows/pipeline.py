"""The end-to-end flow: download -> recaption -> embed -> cluster -> prepare -> K experts -> router ->
register -> evaluate. Order and fan-out only; every stage is its own (sub)flow and reuses finished work.

Expert training fans out per cluster: with `train_deployment` set, each cluster is a separate flow run
of that deployment (e.g. on the hddm-gpu pool, one GPU each), linked to this run as a subflow so
cancelling the pipeline cancels them; without it, the experts train on this machine, `local_trainers` at
once, each in its own process (hddm_flows.local_fan_out; 1 = one cluster after the other in this process).
"""
from __future__ import annotations

from prefect import flow

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import PipelineParams, RegisterExpertParams
from hddm_core.pipeline.stages import StageRef

from hddm_flows import stages as stage_flows
from hddm_flows.fan_out import run_deployments
from hddm_flows.local_fan_out import train_experts_locally


@flow(name="pipeline", log_prints=True)
def pipeline(params: PipelineParams = PipelineParams()) -> dict:
    stage_flows.download(params.stage(params.download))
    stage_flows.recaption(params.stage(params.recaption))
    stage_flows.embed(params.stage(params.embed))
    stage_flows.cluster(params.stage(params.cluster))
    stage_flows.prepare_cluster_data(params.stage(params.prepare))
    k = stages.n_clusters(params, params.prepare.prefix)
    jobs = [params.expert_params(c) for c in range(k)]
    if params.train_deployment:
        experts = run_deployments(params.train_deployment, jobs)
    else:
        experts = train_experts_locally(jobs, params.local_trainers)
    router = stage_flows.train_router(params.stage(params.router))
    if params.register_experts:
        for e in experts:
            stage_flows.register_expert(RegisterExpertParams(
                artifact_root=params.artifact_root, source=e.uri, experts_prefix=params.evaluate.experts_prefix,
                name=f"cluster-{e.extra['cluster_id']:03d}-{e.extra['objective']}"))
    evaluation = stage_flows.evaluate(params.stage(params.evaluate).model_copy(
        update={"experts": [e.uri for e in experts], "router": router.uri}))
    return {"experts": [e.uri for e in experts], "router": router.uri, "report": evaluation.extra["report"],
            "metrics": evaluation.extra["metrics"]}
