variable "name" {
  description = "Name of the cluster and prefix of every resource (lowercase letters, digits, hyphens)."
  type        = string
  default     = "tuneforge"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name: 3-31 characters, lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; split into three public and three private subnets."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "Three availability zones (empty: the region's first three)."
  type        = list(string)
  default     = []
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all private subnets (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
  default     = false
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (the chart needs >= 1.31)."
  type        = string
  default     = "1.33"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Who may reach the Kubernetes API from the internet (empty: private endpoint only; tofu/terraform then runs from inside the VPC, e.g. a bastion or CI runner there)."
  type        = list(string)
  default     = []
}

variable "system_instance_types" {
  description = "Instance types of the system node group (api, operator, CoreDNS, monitoring)."
  type        = list(string)
  default     = ["m6i.large"]
}

variable "system_node_count" {
  description = "Nodes of the system node group (min = desired; max = 2x)."
  type        = number
  default     = 2
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (all of one GPU type)."
  type        = list(string)
  default     = ["g5.2xlarge"]
}

variable "gpu_type" {
  description = "GPU type label of the GPU node group (tuneforge.dev/gpu-type), the chart's default GPU type."
  type        = string
  default     = "a10g"
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU node group (trainers checkpoint and resume after a preemption)."
  type        = string
  default     = "ON_DEMAND"
  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type: ON_DEMAND or SPOT."
  }
}

variable "gpu_node_min" {
  description = "Smallest GPU node group (0: no GPU cost while idle; needs the cluster autoscaler or Karpenter to grow)."
  type        = number
  default     = 0
}

variable "gpu_node_max" {
  description = "Largest GPU node group."
  type        = number
  default     = 4
}

variable "gpu_node_desired" {
  description = "GPU nodes at creation (later changes of the desired size are left to an autoscaler)."
  type        = number
  default     = 1
}

variable "gpu_disk_gib" {
  description = "Root volume of GPU nodes (the trainer image and base-model downloads)."
  type        = number
  default     = 200
}

variable "bucket_name" {
  description = "S3 bucket for files, checkpoints and models (globally unique; empty: <name>-<account id>-<region>)."
  type        = string
  default     = ""
}

variable "bucket_prefix" {
  description = "Prefix inside the bucket that tuneforge owns; the IAM roles reach nothing else."
  type        = string
  default     = "tuneforge"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]*$", var.bucket_prefix))
    error_message = "bucket_prefix: lowercase letters, digits, '.', '_' and '-', no slashes."
  }
}

variable "checkpoint_retention_days" {
  description = "Checkpoints (objects the trainer tags tuneforge-kind=checkpoint) are deleted after this many days; the tuned models stay."
  type        = number
  default     = 30
}

variable "noncurrent_version_days" {
  description = "Overwritten or deleted object versions are kept this many days (bucket versioning)."
  type        = number
  default     = 30
}

variable "db_instance_class" {
  description = "RDS instance class of the PostgreSQL database."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage_gib" {
  description = "Initial database storage (grows automatically up to 5x)."
  type        = number
  default     = 50
}

variable "db_multi_az" {
  description = "A standby in a second zone."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Refuse to delete the database (set false before `destroy`)."
  type        = bool
  default     = true
}

variable "chart_path" {
  description = "The tuneforge Helm chart (this repository's helm/tuneforge)."
  type        = string
  default     = "../../../helm/tuneforge"
}

variable "image_registry" {
  description = "Registry of the tuneforge images (empty: this account's ECR, where ecr.tf makes the repositories)."
  type        = string
  default     = ""
}

variable "image_tag" {
  description = "Tag of the service, operator and trainer images."
  type        = string
  default     = "0.1.0"
}

variable "namespace" {
  description = "Kubernetes namespace of the release (tuneforge wants one of its own)."
  type        = string
  default     = "tuneforge"
}

variable "helm_values" {
  description = "More chart values (YAML documents), merged after the ones this module sets."
  type        = list(string)
  default     = []
}

variable "gpu_resources_per_gpu" {
  description = "CPU and memory a trainer pod gets per GPU on the GPU node group (leave room for the node's daemons)."
  type        = object({ cpu = string, memory = string })
  default     = { cpu = "3", memory = "14Gi" }
}

variable "nvidia_device_plugin_version" {
  description = "Version of NVIDIA's device plugin chart (advertises nvidia.com/gpu on the GPU nodes)."
  type        = string
  default     = "0.17.1"
}
