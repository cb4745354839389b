# The NVIDIA device plugin (GPU nodes advertise nvidia.com/gpu) and the tuneforge release itself.

resource "helm_release" "nvidia_device_plugin" {
  name       = "nvidia-device-plugin"
  repository = "https://nvidia.github.io/k8s-device-plugin"
  chart      = "nvidia-device-plugin"
  version    = var.nvidia_device_plugin_version
  namespace  = "kube-system"
  values = [yamlencode({
    nodeSelector = { "tuneforge.dev/pool" = "gpu" }
    tolerations = [
      { key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" },
      { key = "tuneforge.dev/dedicated", operator = "Exists", effect = "NoSchedule" },
    ]
  })]
  depends_on = [aws_eks_node_group.gpu, aws_eks_addon.vpc_cni]
}

locals {
  image_registry = var.image_registry != "" ? var.image_registry : "${local.account_id}.dkr.ecr.${var.region}.amazonaws.com"
  database_url = "postgresql+psycopg://${aws_db_instance.this.username}:${random_password.db.result}@${aws_db_instance.this.endpoint}/${aws_db_instance.this.db_name}?sslmode=require"
  chart_values = {
    global = { imageRegistry = local.image_registry }
    api = {
      replicas       = 2
      image          = { tag = var.image_tag }
      nodeSelector   = { "tuneforge.dev/pool" = "system" }
      serviceAccount = { annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.workload["api"].arn } }
    }
    operator = {
      image        = { tag = var.image_tag }
      nodeSelector = { "tuneforge.dev/pool" = "system" }
    }
    trainer = {
      image          = { tag = var.image_tag }
      serviceAccount = { annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.workload["trainer"].arn } }
      nodeSelector   = { "tuneforge.dev/pool" = "gpu" }
      tolerations    = [{ key = "tuneforge.dev/dedicated", operator = "Equal", value = "training", effect = "NoSchedule" }]
      gpu = {
        typeLabel   = "tuneforge.dev/gpu-type"
        defaultType = var.gpu_type
        types       = { (var.gpu_type) = var.gpu_resources_per_gpu }
      }
    }
    objectStore = {
      url    = "s3://${aws_s3_bucket.this.bucket}/${local.prefix}"
      region = var.region
      # checkpoints get the tag the bucket's lifecycle rule expires
      extraEnv = { TUNEFORGE_S3_CHECKPOINT_TAG = "tuneforge-kind=checkpoint" }
    }
  }
}

resource "helm_release" "tuneforge" {
  name             = local.fullname
  chart            = var.chart_path
  namespace        = var.namespace
  create_namespace = true
  wait             = true
  timeout          = 600
  values           = concat([yamlencode(local.chart_values)], var.helm_values)

  set_sensitive {
    name  = "database.url"
    value = local.database_url
  }

  depends_on = [
    aws_eks_node_group.system,
    aws_eks_addon.this,
    aws_eks_addon.vpc_cni,
    aws_iam_role_policy.bucket,
    aws_vpc_security_group_ingress_rule.db_from_cluster,
  ]
}
