output "cluster_name" {
  description = "EKS cluster (aws eks update-kubeconfig --name <this> --region <region>)."
  value       = aws_eks_cluster.this.name
}

output "region" {
  description = "AWS region."
  value       = var.region
}

output "kubeconfig_command" {
  description = "Point kubectl at the cluster."
  value       = "aws eks update-kubeconfig --name ${aws_eks_cluster.this.name} --region ${var.region}"
}

output "bucket" {
  description = "S3 bucket and the prefix tuneforge owns."
  value       = "s3://${aws_s3_bucket.this.bucket}/${local.prefix}"
}

output "api_role_arn" {
  description = "IAM role of the api's service account (IRSA)."
  value       = aws_iam_role.workload["api"].arn
}

output "trainer_role_arn" {
  description = "IAM role of the trainer pods' service account (IRSA)."
  value       = aws_iam_role.workload["trainer"].arn
}

output "database_endpoint" {
  description = "RDS PostgreSQL endpoint (host:port); the URL with its password is in the release's Secret."
  value       = aws_db_instance.this.endpoint
}

output "database_url" {
  description = "SQLAlchemy URL of the database (sensitive: tofu output -raw database_url)."
  value       = local.database_url
  sensitive   = true
}

output "api_key_command" {
  description = "Print the first API key."
  value       = "kubectl -n ${var.namespace} get secret ${local.fullname}-auth -o jsonpath='{.data.api-key}' | base64 -d"
}

output "kms_key_arn" {
  description = "KMS key of the bucket, the database, EKS secrets and the log groups."
  value       = aws_kms_key.this.arn
}

output "image_registry" {
  description = "Where to push the images: <this>/tuneforge/{service,operator,trainer}:<image_tag>."
  value       = local.image_registry
}
