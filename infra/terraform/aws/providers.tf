provider "aws" {
  region = var.region
  default_tags {
    tags = merge({ "app.kubernetes.io/part-of" = "tuneforge", "tuneforge:cluster" = var.name }, var.tags)
  }
}

# The Helm provider talks to the new cluster with a short-lived token from `aws eks get-token` (AWS CLI v2
# on the machine that runs tofu/terraform), never a stored credential.
provider "helm" {
  kubernetes {
    host                   = aws_eks_cluster.this.endpoint
    cluster_ca_certificate = base64decode(aws_eks_cluster.this.certificate_authority[0].data)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", aws_eks_cluster.this.name, "--region", var.region]
    }
  }
}
