# IAM roles for the chart's service accounts (IRSA), each reaching only the tuneforge prefix of the bucket:
#   api      <- system:serviceaccount:<namespace>:<release>        (uploads, download links, deletes)
#   trainer  <- system:serviceaccount:<namespace>:<release>-trainer (data, checkpoints, models)
# The operator touches no bucket and gets no role.

locals {
  oidc_host = replace(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
  fullname  = "tuneforge" # the chart's fullname for the release "tuneforge" (helm_release.tuneforge)
  service_accounts = {
    api     = local.fullname
    trainer = "${local.fullname}-trainer"
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = local.service_accounts
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_host}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "ListOwnPrefix"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.prefix}/*", local.prefix]
    }
  }
  statement {
    sid    = "ObjectsUnderOwnPrefix"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:PutObjectTagging", # checkpoints are tagged for the lifecycle rule
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.this.arn}/${local.prefix}/*"]
  }
  statement {
    sid       = "BucketKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "workload" {
  for_each           = local.service_accounts
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
}

resource "aws_iam_role_policy" "bucket" {
  for_each = local.service_accounts
  name     = "tuneforge-bucket-prefix"
  role     = aws_iam_role.workload[each.key].id
  policy   = data.aws_iam_policy_document.bucket.json
}
