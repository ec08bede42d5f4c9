"""Analytics: journey and message metrics, attribution and lift, A/B statistics, funnels,
cohort retention, lifecycle flows and customer lifetime value. Every report is a
`nurture.analytics.report.Report`, served by the admin API and `nurture report …`."""
